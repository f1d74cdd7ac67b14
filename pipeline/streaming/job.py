"""The speed layer: Spark Structured Streaming from `weather-raw` to features and dead letters.

Run with spark-submit (see pipeline.spark_submit):

    spark-submit ... pipeline/streaming/job.py --config <stack.yaml>
        [--input-topic weather-raw] [--checkpoint-dir <state_dir>/checkpoints/streaming]

One Kafka source, validated by pipeline.streaming.validation, feeds two queries,
each with its own checkpoint under --checkpoint-dir:

- `deadletter`: rejected records -> config.kafka.deadletter_topic, JSON
  {reason, raw, raw_bytes, source_topic, partition, offset, kafka_time, detected_time},
  key "topic|partition|offset". Besides the schema rules, a valid record whose event
  time is older than its Kafka append time minus config.spark.late_limit_ms is
  rejected as "late:event_time" (it could only have been dropped by the watermark);
- `features`: valid records, event-time windows per station with a watermark,
  append mode (a window is written once, after the watermark passes its end),
  one JSON row of schema.FEATURE_FIELDS per (station, window) ->
  config.kafka.features_topic, key schema.window_key ("station|window_start").

Both sinks are at-least-once (a batch re-run after a crash writes again):
consumers deduplicate by key. A StreamingQueryListener (pipeline.streaming.progress)
publishes every batch's progress. The process exits 1 with the failing query's
error when a query dies, 2 when a topic is missing (checked before Spark starts:
the broker does not auto-create topics), and 0 after stopping both queries on
SIGTERM/SIGINT received by this Python driver process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import start_http_server
from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipeline import schema
from pipeline.config import StackConfig, duration_ms, load_config
from pipeline.streaming.progress import ProgressMetrics, ProgressPublisher
from pipeline.streaming.validation import REQUIRED_SQL_CONF, split_valid

log = logging.getLogger("pipeline.streaming.job")

FEATURES_QUERY = "features"
DEADLETTER_QUERY = "deadletter"
POLL_INTERVAL_S = 1.0
EXIT_NO_TOPIC = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="stack YAML (pipeline.config)")
    parser.add_argument(
        "--input-topic",
        help="raw topic(s) to read, comma separated (default: kafka.raw_topic and kafka.benchmark_topic)",
    )
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="checkpoint root (default: <state_dir>/checkpoints/streaming)"
    )
    return parser.parse_args(argv)


def missing_topics(bootstrap_servers: str, topics: list[str], timeout_s: float = 30.0) -> list[str]:
    """Topics that do not exist. The broker does not auto-create topics, and Spark's Kafka
    sink would only fail after minutes of metadata timeouts and task retries."""
    # log_level 2: connection-refused lines every 50 ms say nothing the error below does not.
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 2})
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise RuntimeError(f"Kafka at {bootstrap_servers} is not reachable: {exc}") from None
    return [topic for topic in topics if topic not in existing]


def build_session(config: StackConfig) -> SparkSession:
    builder = (
        SparkSession.builder.appName("weather-streaming")
        .config("spark.sql.shuffle.partitions", str(config.spark.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.streaming.metricsEnabled", "true")
        .config("spark.ui.prometheus.enabled", "true")
        # Series named after the application, not its id, so they survive a restart.
        .config("spark.metrics.namespace", "weather_streaming")
        # Driver metrics (incl. the streaming ones above) as Prometheus text on the driver UI.
        .config(
            "spark.metrics.conf.driver.sink.prometheusServlet.class",
            "org.apache.spark.metrics.sink.PrometheusServlet",
        )
        .config("spark.metrics.conf.driver.sink.prometheusServlet.path", "/metrics/prometheus")
    )
    for key, value in REQUIRED_SQL_CONF.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def kafka_source(spark: SparkSession, config: StackConfig, topic: str) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", config.kafka.bootstrap_servers)
        .option("subscribe", topic)
        # Only used on a fresh checkpoint; a restart resumes from the checkpointed offsets.
        .option("startingOffsets", "earliest")
        # Retention or a recreated topic must not stop the pipeline; the loss shows in accounting.
        .option("failOnDataLoss", "false")
        .option("maxOffsetsPerTrigger", str(config.spark.max_offsets_per_trigger))
        .option("groupIdPrefix", "weather-spark")
        .load()
    )


def feature_columns(window: Column) -> dict[str, Column]:
    """Output expression of every schema.FEATURE_FIELDS entry over the aggregated columns."""
    return {
        "station_id": F.col("station_id"),
        "window_start": F.unix_millis(window.start),
        "window_end": F.unix_millis(window.end),
        "count": F.col("count"),
        "seq_min": F.col("seq_min"),
        "seq_max": F.col("seq_max"),
        "temperature_mean": F.col("temperature_mean"),
        "temperature_min": F.col("temperature_min"),
        "temperature_max": F.col("temperature_max"),
        "humidity_mean": F.col("humidity_mean"),
        "pressure_mean": F.col("pressure_mean"),
        "wind_speed_mean": F.col("wind_speed_mean"),
        "precipitation_sum": F.col("precipitation_sum"),
        "ingestion_time_max": F.col("ingestion_time_max"),
        "intended_time_max": F.col("intended_time_max"),
        "kafka_time_max": F.col("kafka_time_max"),
        "t2_max_ms": F.col("t2_max_ms"),
        # In append mode the row is emitted by the batch whose timestamp this is.
        "spark_time": F.unix_millis(F.current_timestamp()),
    }


def window_features(good: DataFrame, window: str, watermark: str) -> DataFrame:
    """Per-station event-time windows of valid rows; columns exactly schema.FEATURE_FIELDS."""
    events = good.withColumn("event_ts", F.timestamp_millis(F.col("event_time"))).withWatermark(
        "event_ts", watermark
    )
    # current_timestamp() is the micro-batch start in a stream: Kafka append -> batch start (T2).
    # It becomes a per-batch literal in the generated code, so it is added after withWatermark,
    # which has no code generation: the large validation stage before it keeps one compiled
    # class for all batches instead of a 0.5 s recompile per batch.
    events = events.withColumn("t2_ms", F.unix_millis(F.current_timestamp()) - F.col("kafka_time"))
    aggregated = events.groupBy(F.window("event_ts", window).alias("window"), F.col("station_id")).agg(
        F.count(F.lit(1)).alias("count"),
        F.min("seq").alias("seq_min"),
        F.max("seq").alias("seq_max"),
        F.avg("temperature_c").alias("temperature_mean"),
        F.min("temperature_c").alias("temperature_min"),
        F.max("temperature_c").alias("temperature_max"),
        F.avg("humidity_pct").alias("humidity_mean"),
        F.avg("pressure_hpa").alias("pressure_mean"),
        F.avg("wind_speed_ms").alias("wind_speed_mean"),
        F.sum("precipitation_mm").alias("precipitation_sum"),
        F.max("ingestion_time").alias("ingestion_time_max"),
        F.max("intended_time").alias("intended_time_max"),
        F.max("kafka_time").alias("kafka_time_max"),
        F.max("t2_ms").alias("t2_max_ms"),
    )
    columns = feature_columns(F.col("window"))
    if tuple(columns) != schema.FEATURE_FIELDS:
        raise RuntimeError(f"feature columns {tuple(columns)} differ from schema.FEATURE_FIELDS")
    return aggregated.select(*[column.alias(name) for name, column in columns.items()])


def feature_records(features: DataFrame) -> DataFrame:
    """Kafka (key, value) of feature rows: key "station|window_start", JSON value with nulls kept."""
    return features.select(
        F.concat_ws("|", F.col("station_id"), F.col("window_start").cast("string")).alias("key"),
        F.to_json(F.struct(*schema.FEATURE_FIELDS), {"ignoreNullFields": "false"}).alias("value"),
    )


def deadletter_records(bad: DataFrame) -> DataFrame:
    """Kafka (key, value) of rejected rows: key "topic|partition|offset", JSON value."""
    return bad.select(
        F.concat_ws(
            "|", F.col("source_topic"), F.col("partition").cast("string"), F.col("offset").cast("string")
        ).alias("key"),
        F.to_json(F.struct(*bad.columns), {"ignoreNullFields": "false"}).alias("value"),
    )


def start_queries(
    spark: SparkSession, config: StackConfig, input_topic: str, checkpoint_dir: Path
) -> list[StreamingQuery]:
    good, bad = split_valid(kafka_source(spark, config, input_topic), config.spark.late_limit_ms)
    trigger = config.spark.trigger

    def kafka_sink(frame: DataFrame, name: str, topic: str) -> StreamingQuery:
        return (
            frame.writeStream.queryName(name)
            .format("kafka")
            .option("kafka.bootstrap.servers", config.kafka.bootstrap_servers)
            .option("topic", topic)
            .option("checkpointLocation", str(checkpoint_dir / name))
            .outputMode("append")
            .trigger(processingTime=trigger)
            .start()
        )

    # Dead letters first: a poison record is recorded even if the features query fails.
    deadletter = kafka_sink(deadletter_records(bad), DEADLETTER_QUERY, config.kafka.deadletter_topic)
    features = window_features(good, config.spark.window, config.spark.watermark)
    return [deadletter, kafka_sink(feature_records(features), FEATURES_QUERY, config.kafka.features_topic)]


def stop_all(spark: SparkSession) -> None:
    for query in spark.streams.active:
        try:
            query.stop()
        except Exception:  # the JVM may already be shutting down
            log.exception("could not stop query %s", query.name)


def supervise(spark: SparkSession, queries: list[StreamingQuery]) -> int:
    """Block until a stop signal (exit 0) or a query ends (exit 1); stop the other queries."""
    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_signal.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        # Poll with a timeout: a Python signal handler runs only between py4j calls.
        while not stop_signal:
            if spark.streams.awaitAnyTermination(POLL_INTERVAL_S):
                ended = [q.name for q in queries if not q.isActive]
                log.error("streaming queries stopped unexpectedly: %s", ", ".join(ended))
                return 1
    except StreamingQueryException as exc:
        failed = [q.name for q in queries if not q.isActive]
        message = str(exc) or repr(exc)
        log.error("streaming query %s failed: %s", ", ".join(failed) or "?", message.splitlines()[0])
        log.error("%s", message)
        return 1
    finally:
        stop_all(spark)
    log.info("stopped on signal %s", signal.Signals(stop_signal[0]).name)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # py4j logs every listener callback at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    args = parse_args(argv)
    config = load_config(args.config)
    input_topic = args.input_topic or ",".join(config.kafka.input_topics)
    checkpoint_dir = args.checkpoint_dir or config.state_dir / "checkpoints" / "streaming"
    bootstrap = config.kafka.bootstrap_servers
    topics = [*input_topic.split(","), config.kafka.features_topic, config.kafka.deadletter_topic]
    try:
        missing = missing_topics(bootstrap, topics)
    except RuntimeError as exc:
        log.error("%s", exc)
        return EXIT_NO_TOPIC
    if missing:
        log.error("topic(s) %s do not exist on %s: create them first", ", ".join(missing), bootstrap)
        return EXIT_NO_TOPIC
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    spark = build_session(config)
    metrics = ProgressMetrics(duration_ms(config.spark.trigger) / 1000)
    if config.spark.metrics_port:
        start_http_server(config.spark.metrics_port, addr=config.network.bind, registry=metrics.registry)
    listener = ProgressPublisher(
        bootstrap,
        config.kafka.progress_topic,
        config.state_dir / "logs" / "spark-progress.jsonl",
        metrics=metrics,
    )
    spark.streams.addListener(listener)
    log.info(
        "reading %s at %s; window %s, watermark %s, trigger %s, far-late after %d s; checkpoints in %s",
        input_topic,
        bootstrap,
        config.spark.window,
        config.spark.watermark,
        config.spark.trigger,
        config.spark.late_limit_ms // 1000,
        checkpoint_dir,
    )
    code = 1
    try:
        queries = start_queries(spark, config, input_topic, checkpoint_dir)
        code = supervise(spark, queries)
    except Exception:
        log.exception("the streaming job failed")
        code = 1
    finally:
        undelivered = listener.flush(5.0)
        if undelivered:
            log.warning("%d progress records not delivered to Kafka", undelivered)
        try:
            spark.stop()
        except Exception:  # the JVM may already be gone (SIGTERM to spark-submit)
            log.warning("SparkSession stop failed; the driver JVM is already stopping")
    return code


if __name__ == "__main__":
    sys.exit(main())
