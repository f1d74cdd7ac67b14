"""Reference ceiling of the streaming stage: Spark's rate source into the noop sink.

A Spark application (run with spark-submit on the stack's cluster) with the
shape of the pipeline's feature job but none of its I/O: rows from the rate
source, keyed into `--stations` keys, a watermark, event-time windows per
key with count/mean/min/max aggregates, written to the noop sink in update
mode at the pipeline's trigger interval. The rate is set far above what the
cluster can take, so the processed rows per second of the batches is the
engine's ceiling on this hardware; the pipeline's own Spark throughput is
read against it. Prints one `RATE_RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import time

MARKER = "RATE_RESULT "


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="stack YAML (window settings come from the options)")
    parser.add_argument("--rows-per-second", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--window", default="10 seconds")
    parser.add_argument("--watermark", default="3 seconds")
    parser.add_argument("--trigger", default="2 seconds")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("weather-reference-rate-noop").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    rows = (
        spark.readStream.format("rate")
        .option("rowsPerSecond", args.rows_per_second)
        .option("numPartitions", args.partitions)
        .load()
        .select(
            (F.col("value") % args.stations).alias("station"),
            F.col("timestamp").alias("event_time"),
            (F.col("value") % 400 / 10.0).alias("temperature"),
        )
    )
    features = (
        rows.withWatermark("event_time", args.watermark)
        .groupBy(F.window("event_time", args.window), "station")
        .agg(
            F.count("*").alias("count"),
            F.avg("temperature").alias("mean"),
            F.min("temperature").alias("min"),
            F.max("temperature").alias("max"),
        )
    )
    query = (
        features.writeStream.format("noop").outputMode("update").trigger(processingTime=args.trigger).start()
    )
    began = time.monotonic()
    while time.monotonic() - began < args.seconds and query.isActive:
        time.sleep(1)
    # PySpark 4 returns progress objects with a .json; older versions return dicts.
    recent = [json.loads(p.json) if hasattr(p, "json") else dict(p) for p in query.recentProgress]
    progress = [p for p in recent if p.get("numInputRows")]
    query.stop()
    measured = progress[args.warmup_batches :] or progress
    rows_in = sum(p["numInputRows"] for p in measured)
    busy_ms = sum(p["durationMs"].get("triggerExecution", 0) for p in measured)
    durations = sorted(p["durationMs"].get("triggerExecution", 0) for p in measured)
    result = {
        "batches": len(measured),
        "warmup_batches_left_out": len(progress) - len(measured),
        "rows": rows_in,
        "busy_s": busy_ms / 1000,
        "rows_per_busy_second": rows_in / (busy_ms / 1000) if busy_ms else None,
        "rows_per_second_wall": rows_in / args.seconds,
        "batch_ms_p50": durations[len(durations) // 2] if durations else None,
        "batch_ms_max": durations[-1] if durations else None,
        "offered_rows_per_second": args.rows_per_second,
    }
    print(MARKER + json.dumps(result), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
