"""Prediction building and the inference actor class, in-process (no Ray cluster)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from pipeline.inference.actors import InferenceActor, actor_options, build_predictions
from pipeline.model import ModelError, TemperatureModel, feature_vector, save_model
from pipeline.schema import FEATURE_FIELDS, PREDICTION_FIELDS

WINDOW_START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_END = WINDOW_START + 300_000


def make_model(version: int = 1, intercept: float = 0.5, horizon: int = 60) -> TemperatureModel:
    return TemperatureModel(
        version=version,
        coefficients=[-0.05, 0.4, -0.6, 0.1, 0.05, 0.2, -0.3, 0.01, -0.02, 0.03, -0.01],
        intercept=intercept,
        horizon_minutes=horizon,
    )


def feature_row(station: str = "st-1", temperature: float = 12.5, window_start: int = WINDOW_START) -> dict:
    row = {name: None for name in FEATURE_FIELDS}
    row.update(
        station_id=station,
        window_start=window_start,
        window_end=window_start + 300_000,
        count=30,
        temperature_mean=temperature,
        ingestion_time_max=window_start + 299_000,
        spark_time=window_start + 310_000,
    )
    return row


def expected_temperature(model: TemperatureModel, temperature: float, epoch_ms: int) -> float:
    x = feature_vector(temperature, epoch_ms)
    return temperature + model.intercept + sum(c * v for c, v in zip(model.coefficients, x, strict=True))


def test_build_predictions_uses_window_end_and_mean_temperature() -> None:
    model = make_model()
    clock = itertools.count(1000, 7)
    rows = [feature_row("a", 12.5), feature_row("b", -3.25, WINDOW_START + 300_000)]
    rows[0]["features_kafka_time"] = 123

    out = build_predictions(model, rows, "actor-x", clock=lambda: next(clock))

    assert len(out) == 2
    assert out[0]["predicted_temperature_c"] == pytest.approx(expected_temperature(model, 12.5, WINDOW_END))
    assert out[1]["predicted_temperature_c"] == pytest.approx(
        expected_temperature(model, -3.25, WINDOW_END + 300_000)
    )
    # Different inputs must give different forecasts (the model is really applied).
    assert out[0]["predicted_temperature_c"] != pytest.approx(out[1]["predicted_temperature_c"])
    for row in out:
        assert row["model_version"] == 1
        assert row["horizon_minutes"] == 60
        assert row["actor_id"] == "actor-x"
        assert (row["ray_start"], row["ray_end"]) == (1000, 1007)  # one pair around the model call
        assert set(PREDICTION_FIELDS) <= set(row)
        assert set(FEATURE_FIELDS) <= set(row)
    assert out[0]["features_kafka_time"] == 123
    assert out[1]["features_kafka_time"] is None


def test_build_predictions_copies_rows_and_keeps_feature_fields() -> None:
    rows = [feature_row("a", 10.0)]
    rows[0]["extra_trace"] = "kept"
    out = build_predictions(make_model(), rows, "x")
    assert out[0]["extra_trace"] == "kept"
    assert out[0]["temperature_mean"] == 10.0
    assert out[0]["spark_time"] == WINDOW_START + 310_000
    assert "model_version" not in rows[0]  # the input row is not modified


def test_build_predictions_empty_batch() -> None:
    assert build_predictions(make_model(), [], "x") == []


def test_actor_predict_stats_and_reload(tmp_path: Path) -> None:
    save_model(tmp_path, make_model(version=1, intercept=0.0))
    actor = InferenceActor(str(tmp_path))  # version None: CURRENT
    first = actor.predict([feature_row("a", 20.0), feature_row("b", 21.0)])
    assert [p["model_version"] for p in first] == [1, 1]

    stats = actor.stats()
    assert stats["calls"] == 1
    assert stats["rows"] == 2
    assert stats["errors"] == 0
    assert stats["model_version"] == 1
    assert stats["model_load_ms"] >= 0
    assert stats["startup_ms"] >= stats["model_load_ms"]
    assert stats["rss_bytes"] > 10_000_000
    assert stats["actor_id"].startswith("local-")

    # Roll out v2 (a different intercept): the next call serves it.
    save_model(tmp_path, make_model(version=2, intercept=2.0))
    after = actor.reload(None)
    assert after["model_version"] == 2
    assert after["reloads"] == 1
    second = actor.predict([feature_row("a", 20.0)])
    assert second[0]["model_version"] == 2
    assert second[0]["predicted_temperature_c"] == pytest.approx(first[0]["predicted_temperature_c"] + 2.0)


def test_actor_counts_errors_and_reraises(tmp_path: Path) -> None:
    save_model(tmp_path, make_model())
    actor = InferenceActor(str(tmp_path))
    with pytest.raises(KeyError):
        actor.predict([{"station_id": "a", "window_start": WINDOW_START, "window_end": WINDOW_END}])
    assert actor.stats()["errors"] == 1
    assert actor.stats()["calls"] == 0


def test_actor_without_model_fails_to_start(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model"):
        InferenceActor(str(tmp_path))


def test_actor_reload_to_missing_version_keeps_serving(tmp_path: Path) -> None:
    save_model(tmp_path, make_model())
    actor = InferenceActor(str(tmp_path))
    with pytest.raises(ModelError, match="version 9 not found"):
        actor.reload(9)
    out = actor.predict([feature_row()])
    assert out[0]["model_version"] == 1
    assert math.isfinite(out[0]["predicted_temperature_c"])


def test_actor_options_are_restartable_and_spread() -> None:
    options = actor_options(0.25)
    assert options["max_restarts"] == -1
    assert options["max_task_retries"] == -1
    assert options["num_cpus"] == 0.25
    assert options["scheduling_strategy"] == "SPREAD"
    pinned = actor_options(0.5, node_id="ab" * 28)["scheduling_strategy"]
    assert pinned.node_id == "ab" * 28
    assert pinned.soft is True
