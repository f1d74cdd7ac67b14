"""Batch training pieces on a local SparkSession: data loading, features, target pairs, split."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.batch import train
from pipeline.model import FEATURE_NAMES, TemperatureModel, feature_vector


def epoch(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.fixture(scope="module")
def observations(spark: SparkSession):
    return train.load_observations(spark)


def test_spark_features_equal_python_feature_vector(spark: SparkSession) -> None:
    cases = [
        (12.5, 0),
        (-3.0, 1),
        (20.0, 6 * 3_600_000),
        (4.1, epoch(2010, 1, 1, 8)),
        (15.2, epoch(2010, 7, 4, 21, 30)),
        (0.0, epoch(2010, 12, 31, 23, 59, 59)),
        (33.3, epoch(2026, 11, 27, 2, 15)),
        (7.0, 86_400_000 * 365 - 1),
    ]
    frame = spark.createDataFrame(cases, "temperature double, epoch_ms long")
    rows = frame.select(*train.feature_columns(F.col("temperature"), F.col("epoch_ms"))).collect()
    assert len(rows) == len(cases)
    for (temperature, epoch_ms), row in zip(cases, rows, strict=True):
        assert list(row.asDict()) == list(FEATURE_NAMES)
        assert list(row) == pytest.approx(feature_vector(temperature, epoch_ms), abs=1e-12)


def test_observations_are_celsius_in_utc(observations) -> None:
    counts = {r["station"]: r["count"] for r in observations.groupBy("station").count().collect()}
    # One year of hours (8760) minus the hour skipped at the spring DST change.
    assert counts == {"seattle": 8759, "san-francisco": 8759}

    def temperature_at(station: str, epoch_ms: int) -> float:
        rows = observations.where((F.col("station") == station) & (F.col("epoch_ms") == epoch_ms)).collect()
        assert len(rows) == 1, (station, epoch_ms)
        return rows[0]["temperature_c"]

    # seattle-temps.csv: "2010/01/01 00:00,39.4" is local midnight, PST = UTC-8.
    assert temperature_at("seattle", epoch(2010, 1, 1, 8)) == pytest.approx((39.4 - 32) * 5 / 9)
    # sf-temps.csv: "47.8,2010/01/01 00:00:00".
    assert temperature_at("san-francisco", epoch(2010, 1, 1, 8)) == pytest.approx((47.8 - 32) * 5 / 9)
    # In summer the local clock is PDT = UTC-7: local midnight of July 1 is 07:00 UTC.
    summer = observations.where(F.col("epoch_ms") == epoch(2010, 7, 1, 7)).count()
    assert summer == 2
    stats = observations.agg(F.min("temperature_c"), F.max("temperature_c")).first()
    assert -5 < stats[0] < stats[1] < 30


def test_fahrenheit_check_rejects_celsius_data(spark: SparkSession) -> None:
    celsius = spark.createDataFrame(
        [("x", i * 3_600_000, 10.0 + (i % 10)) for i in range(2000)],
        "station string, epoch_ms long, temp_f double",
    )
    with pytest.raises(train.TrainingError, match="do not look like degrees Fahrenheit"):
        train.check_fahrenheit(celsius)


def test_training_rows_pair_exact_later_hours(spark: SparkSession) -> None:
    hour = 3_600_000
    data = [("a", 0, 10.0), ("a", hour, 11.0), ("a", 2 * hour, 13.5), ("a", 4 * hour, 9.0), ("b", hour, 5.0)]
    observations = spark.createDataFrame(data, "station string, epoch_ms long, temperature_c double")
    one_hour = {
        (r["station"], r["epoch_ms"]): r["delta"] for r in train.training_rows(observations, 60).collect()
    }
    # 2h -> 3h is a gap: no pair; station b has no later hour.
    assert one_hour == {("a", 0): 1.0, ("a", hour): 2.5}
    two_hours = {
        (r["station"], r["epoch_ms"]): r["delta"] for r in train.training_rows(observations, 120).collect()
    }
    assert two_hours == {("a", 0): 3.5, ("a", 2 * hour): -4.5}


def test_time_split_has_no_leakage(spark: SparkSession) -> None:
    hour = 3_600_000
    rows = spark.createDataFrame([("a", i * hour) for i in range(101)], "station string, epoch_ms long")
    train_rows, test_rows, cut = train.time_split(rows, 180)
    assert cut == 80 * hour
    train_times = sorted(r["epoch_ms"] for r in train_rows.collect())
    test_times = sorted(r["epoch_ms"] for r in test_rows.collect())
    assert test_times == [i * hour for i in range(80, 101)]
    # The target (3 h later) of every training row lies before the hold-out period.
    assert train_times == [i * hour for i in range(0, 77)]


def test_fit_beats_persistence_and_matches_python_predictions(spark: SparkSession) -> None:
    model, metrics = train.train(spark, horizon_minutes=60, reg_param=0.001)
    assert metrics["test_rows"] > 3000 and metrics["train_rows"] > 13000
    assert metrics["holdout_mae_c"] < metrics["persistence_mae_c"]
    assert len(model.coefficients) == len(FEATURE_NAMES)
    assert "seattle-temps.csv" in model.dataset and "sf-temps.csv" in model.dataset
    # A saved copy predicts exactly what the fitted one does (file format round trip).
    copy = TemperatureModel.from_dict({**model.__dict__, "version": 1})
    sample = [(10.0, epoch(2010, 11, 1, 12)), (18.0, epoch(2010, 12, 1, 0))]
    assert copy.predict(sample) == model.predict(sample)


def test_horizon_must_be_whole_hours() -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--config", "x.yaml", "--horizon-minutes", "90"])
    assert train.parse_args(["--config", "x.yaml", "--horizon-minutes", "180"]).horizon_minutes == 180
