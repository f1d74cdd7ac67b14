"""Model files: versioned, atomic, and predictions follow the stored coefficients."""

import pytest

from pipeline.model import (
    FEATURE_NAMES,
    ModelError,
    TemperatureModel,
    current_version,
    feature_vector,
    load_model,
    next_version,
    save_model,
)


def make(version: int, intercept: float = 0.0) -> TemperatureModel:
    return TemperatureModel(version=version, coefficients=[0.0] * len(FEATURE_NAMES), intercept=intercept)


def test_no_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no model"):
        load_model(tmp_path)


def test_versions_grow_and_current_follows(tmp_path):
    assert next_version(tmp_path) == 1
    save_model(tmp_path, make(1, intercept=0.5))
    save_model(tmp_path, make(2, intercept=1.5))
    assert current_version(tmp_path) == 2
    assert next_version(tmp_path) == 3
    assert load_model(tmp_path).intercept == 1.5
    assert load_model(tmp_path, version=1).intercept == 0.5


def test_an_existing_version_is_never_overwritten(tmp_path):
    save_model(tmp_path, make(1))
    with pytest.raises(ModelError, match="already exists"):
        save_model(tmp_path, make(1))


def test_prediction_is_current_temperature_plus_linear_delta():
    coefficients = [0.0] * len(FEATURE_NAMES)
    coefficients[0] = 0.1  # delta grows with temperature
    model = TemperatureModel(version=1, coefficients=coefficients, intercept=-1.0)
    epoch_ms = 1_795_740_300_000
    (prediction,) = model.predict([(20.0, epoch_ms)])
    assert prediction == pytest.approx(20.0 + (-1.0 + 0.1 * 20.0))


def test_feature_vector_time_of_day_harmonics():
    midnight = feature_vector(10.0, 0)
    six_am = feature_vector(10.0, 6 * 3_600_000)
    assert midnight[:3] == pytest.approx([10.0, 0.0, 1.0])
    assert six_am[1:3] == pytest.approx([1.0, 0.0], abs=1e-9)


def test_model_with_other_features_is_refused(tmp_path):
    model = make(1)
    model.features = ["temperature_c"]
    model.coefficients = [1.0]
    save_model(tmp_path, model)
    with pytest.raises(ModelError, match="do not match"):
        load_model(tmp_path)
