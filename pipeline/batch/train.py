"""The batch layer: train the temperature forecasting model with Spark from real hourly observations.

Run with spark-submit (see pipeline.spark_submit):

    spark-submit ... pipeline/batch/train.py --config <stack.yaml> [--horizon-minutes 60]

Data: the hourly air temperatures of Seattle and San Francisco for 2010 that
ship inside the `vega_datasets` package (seattle-temps.csv, sf-temps.csv, from
NOAA), read from the installed package: no network, nothing copied into the
repository. The files give degrees Fahrenheit in local wall-clock time
(America/Los_Angeles, with daylight saving: the daily maximum falls at 15:00);
both are converted, to Celsius and to UTC epoch ms, because inference sees UTC
stamps and Celsius (pipeline.schema).

Method: per station (city), the target is delta = T(t + horizon) - T(t) found by
a self-join on the exact later hour (gaps stay gaps); features are
pipeline.model.feature_vector computed in Spark SQL with the same formulas
(`feature_columns`, checked against the Python form by a unit test and, on every
run, by comparing Spark's predictions with TemperatureModel.predict). The last
20% of the time span is the hold-out, split by time without shuffling, and
training rows whose target lies in the hold-out period are left out. A
pyspark.ml LinearRegression (small ridge penalty) is fitted; hold-out MAE is
compared with the persistence forecast (delta = 0).

Outcome: a new model version saved with pipeline.model.save_model and one
`TRAIN_RESULT {json}` line on stdout. Exit codes: 0 saved, 2 bad arguments or
data, 3 the model does not beat persistence (nothing saved), 4 no executor
granted (the cluster's cores are all taken, e.g. by the streaming job).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.ml.feature import VectorAssembler
from pyspark.ml.regression import LinearRegression
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.config import load_config
from pipeline.model import (
    DAY_MS,
    FEATURE_NAMES,
    HOUR_MS,
    TemperatureModel,
    feature_vector,
    next_version,
    save_model,
)
from pipeline.schema import WEATHER_FIELDS, now_ms

TRAIN_MARKER = "TRAIN_RESULT "
EXIT_BAD_INPUT = 2
EXIT_NOT_BETTER = 3
EXIT_NO_EXECUTORS = 4

LOCAL_TIME_ZONE = "America/Los_Angeles"  # both cities; the files are in local wall-clock time
HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Series:
    """One station's hourly temperature file inside vega_datasets."""

    station: str
    dataset: str  # vega_datasets name
    time_format: str  # Spark datetime pattern of the file's `date` column


SERIES = (
    Series("seattle", "seattle_temps", "yyyy/MM/dd HH:mm"),
    Series("san-francisco", "sf_temps", "yyyy/MM/dd HH:mm:ss"),
)


class TrainingError(RuntimeError):
    """The input data or arguments cannot produce a model."""


def dataset_path(name: str) -> Path:
    """Path of a dataset file shipped in the installed vega_datasets package."""
    from vega_datasets import local_data

    path = Path(getattr(local_data, name).filepath)
    if not path.is_file():
        raise TrainingError(f"vega_datasets file {path} is missing: reinstall vega_datasets (`make setup`)")
    return path


def dataset_description() -> str:
    import vega_datasets

    files = ", ".join(dataset_path(s.dataset).name for s in SERIES)
    return (
        f"vega_datasets {vega_datasets.__version__}: {files} (NOAA hourly air temperature, 2010, "
        f"stations {', '.join(s.station for s in SERIES)}; degF -> degC, {LOCAL_TIME_ZONE} -> UTC)"
    )


def fahrenheit_to_celsius(column: Column) -> Column:
    return (column - F.lit(32.0)) * F.lit(5.0 / 9.0)


def load_observations(spark: SparkSession) -> DataFrame:
    """(station, epoch_ms, temperature_c) of every series, in UTC and Celsius."""
    frames = []
    for series in SERIES:
        raw = spark.read.option("header", "true").csv(str(dataset_path(series.dataset)))
        # The session zone is UTC, so to_timestamp reads the wall clock as if UTC;
        # to_utc_timestamp then shifts it by the Los Angeles offset of that date (PST/PDT).
        local = F.to_timestamp(F.col("date"), series.time_format)
        frames.append(
            raw.select(
                F.lit(series.station).alias("station"),
                F.unix_millis(F.to_utc_timestamp(local, LOCAL_TIME_ZONE)).alias("epoch_ms"),
                F.col("temp").cast("double").alias("temp_f"),
            )
        )
    observations = frames[0]
    for frame in frames[1:]:
        observations = observations.unionByName(frame)
    observations = observations.where(F.col("epoch_ms").isNotNull() & F.col("temp_f").isNotNull())
    check_fahrenheit(observations)
    # Two local hours can map to one UTC hour around the DST change: keep one reading per hour.
    return (
        observations.groupBy("station", "epoch_ms")
        .agg(F.avg(fahrenheit_to_celsius(F.col("temp_f"))).alias("temperature_c"))
        .cache()
    )


def check_fahrenheit(observations: DataFrame) -> None:
    """Fail unless every series looks like plausible outdoor air temperature in degrees F."""
    low, high = WEATHER_FIELDS["temperature_c"]
    stats = observations.groupBy("station").agg(
        F.count(F.lit(1)).alias("rows"),
        F.avg("temp_f").alias("mean"),
        F.min("temp_f").alias("min"),
        F.max("temp_f").alias("max"),
    )
    for row in stats.collect():
        mean_c = (row["mean"] - 32) * 5 / 9
        # A Celsius file would have a mean of 10-15, i.e. -12..-9 C after conversion.
        if not (
            -5.0 <= mean_c <= 30.0 and low <= (row["min"] - 32) * 5 / 9 and (row["max"] - 32) * 5 / 9 <= high
        ):
            raise TrainingError(
                f"{row['station']}: values (mean {row['mean']:.1f}, {row['min']}..{row['max']}) "
                "do not look like degrees Fahrenheit of outdoor air"
            )
        if row["rows"] < 1000:
            raise TrainingError(f"{row['station']}: only {row['rows']} hourly rows")


def feature_columns(temperature: Column, epoch_ms: Column) -> list[Column]:
    """pipeline.model.feature_vector as Spark columns, in FEATURE_NAMES order.

    Knows more features than the model may use (the temperature x time-of-day
    interactions), so switching model.FEATURE_NAMES needs no change here.
    """
    hour = F.pmod(epoch_ms, F.lit(DAY_MS)) / F.lit(HOUR_MS)
    # Python: (epoch_ms // DAY_MS) % 365.25, floor division then float modulo.
    day_of_year = F.pmod(F.floor(epoch_ms / F.lit(DAY_MS)).cast("double"), F.lit(365.25))
    h = F.lit(2 * math.pi) * hour / F.lit(24.0)
    d = F.lit(2 * math.pi) * day_of_year / F.lit(365.25)
    t = temperature.cast("double")
    diurnal = {
        "sin_hour": F.sin(h),
        "cos_hour": F.cos(h),
        "sin_2hour": F.sin(F.lit(2.0) * h),
        "cos_2hour": F.cos(F.lit(2.0) * h),
    }
    known = {
        "temperature_c": t,
        **diurnal,
        "sin_doy": F.sin(d),
        "cos_doy": F.cos(d),
        **{f"temp_x_{name}": t * column for name, column in diurnal.items()},
    }
    unknown = [name for name in FEATURE_NAMES if name not in known]
    if unknown:
        raise TrainingError(f"no Spark expression for model feature(s) {unknown}: extend feature_columns")
    return [known[name].alias(name) for name in FEATURE_NAMES]


def training_rows(observations: DataFrame, horizon_minutes: int) -> DataFrame:
    """(station, epoch_ms, features..., delta) for every hour whose `horizon` later hour exists."""
    horizon_ms = horizon_minutes * 60_000
    now = observations.alias("now")
    later = observations.alias("later")
    joined = now.join(
        later,
        (F.col("now.station") == F.col("later.station"))
        & (F.col("later.epoch_ms") == F.col("now.epoch_ms") + F.lit(horizon_ms)),
    )
    return joined.select(
        F.col("now.station").alias("station"),
        F.col("now.epoch_ms").alias("epoch_ms"),
        *feature_columns(F.col("now.temperature_c"), F.col("now.epoch_ms")),
        (F.col("later.temperature_c") - F.col("now.temperature_c")).alias("delta"),
    )


def time_split(rows: DataFrame, horizon_minutes: int) -> tuple[DataFrame, DataFrame, int]:
    """Train rows (target before the cut), hold-out rows (from the cut on), and the cut in epoch ms."""
    bounds = rows.agg(F.min("epoch_ms").alias("first"), F.max("epoch_ms").alias("last")).first()
    if bounds is None or bounds["first"] is None:
        raise TrainingError("no (hour, hour + horizon) pairs in the data")
    cut = int(bounds["first"] + (1 - HOLDOUT_FRACTION) * (bounds["last"] - bounds["first"]))
    horizon_ms = horizon_minutes * 60_000
    # A training target observed after the cut would leak hold-out information.
    train = rows.where(F.col("epoch_ms") + F.lit(horizon_ms) < F.lit(cut))
    test = rows.where(F.col("epoch_ms") >= F.lit(cut))
    return train, test, cut


def mean_abs(frame: DataFrame, error: Column) -> float:
    value = frame.agg(F.avg(F.abs(error))).first()
    return float(value[0]) if value is not None and value[0] is not None else float("nan")


def wait_for_executors(spark: SparkSession, timeout_s: float) -> bool:
    """True once an executor registered. A standalone app gets none while others hold every core."""
    tracker = spark.sparkContext._jsc.sc().statusTracker()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # getExecutorInfos lists the driver too.
        if len(tracker.getExecutorInfos()) > 1:
            return True
        time.sleep(1.0)
    return False


def train(
    spark: SparkSession, horizon_minutes: int, reg_param: float
) -> tuple[TemperatureModel, dict[str, Any]]:
    """Fit and evaluate; returns the model (version unset: 0) and its metrics."""
    observations = load_observations(spark)
    rows = training_rows(observations, horizon_minutes).cache()
    train_rows, test_rows, cut = time_split(rows, horizon_minutes)
    assembler = VectorAssembler(inputCols=list(FEATURE_NAMES), outputCol="features")
    regression = LinearRegression(
        featuresCol="features",
        labelCol="delta",
        regParam=reg_param,
        elasticNetParam=0.0,
        standardization=True,
    )
    fitted = regression.fit(assembler.transform(train_rows))
    test_predictions = fitted.transform(assembler.transform(test_rows)).cache()
    train_predictions = fitted.transform(assembler.transform(train_rows))

    model = TemperatureModel(
        version=0,
        coefficients=[float(c) for c in fitted.coefficients],
        intercept=float(fitted.intercept),
        horizon_minutes=horizon_minutes,
        trained_at_ms=now_ms(),
        dataset=dataset_description(),
    )
    check_python_parity(model, test_predictions)

    holdout_mae = mean_abs(test_predictions, F.col("prediction") - F.col("delta"))
    persistence_mae = mean_abs(test_predictions, F.col("delta"))
    per_station = {
        row["station"]: {
            "holdout_mae_c": row["model"],
            "persistence_mae_c": row["persistence"],
            "test_rows": row["rows"],
        }
        for row in test_predictions.groupBy("station")
        .agg(
            F.avg(F.abs(F.col("prediction") - F.col("delta"))).alias("model"),
            F.avg(F.abs(F.col("delta"))).alias("persistence"),
            F.count(F.lit(1)).alias("rows"),
        )
        .collect()
    }
    metrics: dict[str, Any] = {
        "holdout_mae_c": holdout_mae,
        "persistence_mae_c": persistence_mae,
        "skill_vs_persistence": 1 - holdout_mae / persistence_mae if persistence_mae > 0 else None,
        "holdout_rmse_c": math.sqrt(
            test_predictions.agg(F.avg((F.col("prediction") - F.col("delta")) ** 2)).first()[0]  # type: ignore[index]
        ),
        "train_mae_c": mean_abs(train_predictions, F.col("prediction") - F.col("delta")),
        "train_rows": train_rows.count(),
        "test_rows": test_predictions.count(),
        "holdout_from_ms": cut,
        "reg_param": reg_param,
        "per_station": per_station,
    }
    model.metrics = metrics
    return model, metrics


def check_python_parity(model: TemperatureModel, predictions: DataFrame, sample: int = 50) -> None:
    """Spark's prediction must equal TemperatureModel.predict (same features, same order)."""
    rows = predictions.select("temperature_c", "epoch_ms", "prediction").limit(sample).collect()
    for row in rows:
        python = model.predict([(row["temperature_c"], row["epoch_ms"])])[0] - row["temperature_c"]
        if abs(python - row["prediction"]) > 1e-6:
            raise TrainingError(
                f"Spark and Python features disagree at {row['epoch_ms']}: delta {row['prediction']} vs "
                f"{python} (features {feature_vector(row['temperature_c'], row['epoch_ms'])})"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="stack YAML (pipeline.config)")
    parser.add_argument("--horizon-minutes", type=int, default=60, help="forecast horizon, whole hours")
    parser.add_argument("--reg-param", type=float, default=0.001, help="ridge penalty of LinearRegression")
    parser.add_argument(
        "--executor-timeout", type=float, default=120.0, help="seconds to wait for a free executor"
    )
    args = parser.parse_args(argv)
    if args.horizon_minutes <= 0 or args.horizon_minutes % 60:
        parser.error(
            f"--horizon-minutes must be a positive multiple of 60 (hourly data), got {args.horizon_minutes}"
        )
    if args.reg_param < 0:
        parser.error("--reg-param must be >= 0")
    return args


def emit(result: dict[str, Any]) -> None:
    print(TRAIN_MARKER + json.dumps(result, sort_keys=True, allow_nan=False, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The stack file is the whole configuration: the submitter applied its WB_* overrides when it
    # wrote it, and a submitter may pass its environment through (Airflow's SparkSubmitHook does).
    config = load_config(args.config, environ={})
    started = time.monotonic()
    spark = (
        SparkSession.builder.appName("weather-train")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(config.spark.shuffle_partitions))
        .getOrCreate()
    )
    try:
        if spark.sparkContext.master.startswith("spark://") and not wait_for_executors(
            spark, args.executor_timeout
        ):
            print(
                f"no executor was granted within {args.executor_timeout:.0f}s on "
                f"{spark.sparkContext.master}: every worker core is taken (the streaming job takes all "
                "cores unless spark.cores.max is set); free a core or add a worker",
                file=sys.stderr,
            )
            return EXIT_NO_EXECUTORS
        try:
            model, metrics = train(spark, args.horizon_minutes, args.reg_param)
        except TrainingError as exc:
            print(f"training failed: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        result: dict[str, Any] = {
            "horizon_minutes": args.horizon_minutes,
            "coefficients": dict(zip(FEATURE_NAMES, model.coefficients, strict=True)),
            "intercept": model.intercept,
            "dataset": model.dataset,
            "duration_s": round(time.monotonic() - started, 1),
            **{k: v for k, v in metrics.items() if k != "per_station"},
            "per_station": metrics["per_station"],
        }
        if not metrics["holdout_mae_c"] < metrics["persistence_mae_c"]:
            result.update(saved=False, version=None, model_path=None)
            emit(result)
            print(
                f"model not saved: hold-out MAE {metrics['holdout_mae_c']:.4f} C does not beat "
                f"persistence {metrics['persistence_mae_c']:.4f} C",
                file=sys.stderr,
            )
            return EXIT_NOT_BETTER
        model.version = next_version(config.model_dir)
        path = save_model(config.model_dir, model)
        result.update(saved=True, version=model.version, model_path=str(path))
        emit(result)
        return 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
