"""Step verdicts and run summaries from synthetic outcomes: sustained or not, why, and which tier."""

from __future__ import annotations

import math

from pipeline.accounting import Accounting
from weatherbench.experiments import api_load_impact, summarize, with_api_load
from weatherbench.metrics import Metric, Series
from weatherbench.runner import StepOutcome, sustainability
from weatherbench.workloads import load_workload

PLAN = load_workload("quick").plan("scalability-spark")


def complete() -> Accounting:
    return Accounting(expected_messages=100, served_messages=100, expected_windows=10, served_windows=10)


def outcome(step_index: int = 0, spark_lag_slope: float = 0.0, **values: float) -> StepOutcome:
    step = PLAN.steps[step_index]
    result = StepOutcome(step=step, repetition=0, station_prefix="x", accounting={"lost_messages": 0})
    base = {
        "producer.sent": 1000,
        "producer.behind": 0,
        "producer.failed": 0,
        "producer.ack_latency.p99": 10,
        "latency.e2e.p95": 20_000,
        "latency.window_close.p95": 20_000,
        "spark.batches": 10,
        "spark.batches_over_interval": 0,
        "lag.spark.max": 50,
        "lag.ray.max": 0,
        "resources.machine.cpu.mean": 50,
        "spark.capacity": 100.0 * step.stack.spark_workers,
        "throughput.achieved": step.load.rate,
    }
    base.update(values)
    result.metrics = [Metric(name, float(value), "") for name, value in base.items()]
    warmup = step.load.warmup_s
    result.series = [
        Series("lag.spark", "messages", [(t, 50 + spark_lag_slope * max(0, t - warmup)) for t in range(60)]),
        Series("lag.ray", "messages", [(t, 0.0) for t in range(60)]),
    ]
    return result


def test_a_flat_step_within_slos_is_sustained() -> None:
    step = outcome()
    ok, reasons, signals = sustainability(step, step.step.load, PLAN.slo, 60, complete())
    assert ok, reasons
    assert not any(signals.values())
    assert step.value("lag.spark.slope") == 0.0


def test_growing_spark_lag_fails_and_names_spark() -> None:
    step = outcome(spark_lag_slope=10.0)  # 10 msg/s against a 5% x 40 msg/s = 2 msg/s tolerance
    ok, reasons, signals = sustainability(step, step.step.load, PLAN.slo, 60, complete())
    assert not ok
    assert any("spark lag grows 10.0 msg/s" in r for r in reasons)
    assert signals["spark"] and not signals["ray"]


def test_a_late_sender_slo_breach_and_loss_are_all_reasons() -> None:
    step = outcome(**{"producer.behind": 80, "latency.e2e.p95": 90_000})
    lossy = Accounting(expected_messages=100, served_messages=90, expected_windows=10, served_windows=9)
    lossy.missing_windows.append(("x-0000", 0))
    ok, reasons, signals = sustainability(step, step.step.load, PLAN.slo, 60, lossy)
    assert not ok
    text = " | ".join(reasons)
    assert "80 of 1000 messages over 100 ms late" in text
    assert "end-to-end p95 90.0 s > SLO 60 s" in text
    assert "10 messages not served (1 windows missing" in text
    assert signals["producer"]


def test_summary_scaling_demand_and_oversubscription() -> None:
    one = outcome(0, spark_lag_slope=10.0)
    one.sustained, one.bottleneck = False, "spark"
    two = outcome(1)
    two.sustained = True
    summary = summarize(PLAN, [one, two], cores=2)
    assert summary["demand_workers"] == 2
    assert [p["workers"] for p in summary["scaling"]] == [1, 2]
    assert summary["scaling"][1]["speedup"] == 2.0
    assert summary["bottleneck"] == "spark"
    assert summary["steps"][1]["oversubscribed"] is True  # 2 Spark + 2 Ray workers on 2 cores
    assert "oversubscribe" in summary["note"]
    entry = summary["steps"][0]["metrics"]["spark.capacity"]
    assert entry["n"] == 1 and entry["ci95"] is None


def test_api_load_steps_pair_up_and_compare() -> None:
    plan = load_workload("quick").plan("latency", {"users": 4})
    pairs = with_api_load(plan)
    assert [(s.index, s.label, users) for s, users in pairs] == [(0, "baseline", 0), (1, "baseline+api4", 4)]
    quiet = outcome(**{"latency.e2e.p95": 10_000})
    quiet.step = pairs[0][0]
    loaded = outcome(**{"latency.e2e.p95": 12_000, "api_load.rps": 30})
    loaded.step, loaded.api_users = pairs[1][0], 4
    (impact,) = api_load_impact([quiet, loaded])
    assert impact["latency.e2e.p95 without"] == 10_000
    assert impact["latency.e2e.p95 with"] == 12_000
    assert impact["api_rps"] == 30
    assert math.isnan(impact["api_error_rate"])


def test_bench_config_takes_the_step_shape_and_keeps_the_base_ports(tmp_path) -> None:
    from pipeline.config import load_config
    from weatherbench.runner import bench_config

    base = load_config(environ={}, overrides={"api": {"port": 18999}})
    shape = load_workload("quick").plan("brokers").steps[1].stack
    config = bench_config(base, shape, tmp_path / "bench")
    assert config.state_dir == tmp_path / "bench"
    assert config.kafka.brokers == 3 and config.kafka.replication_factor == 3
    assert (config.spark.window, config.spark.watermark, config.spark.trigger) == (
        shape.window,
        shape.watermark,
        shape.trigger,
    )
    assert config.spark.workers == shape.spark_workers and config.ray.workers == shape.ray_workers
    assert config.api.port == 18999


def test_padded_observations_come_out_near_the_requested_size() -> None:
    from pipeline.producer.observations import make_source
    from pipeline.producer.producer import WeatherProducer
    from pipeline.schema import encode
    from weatherbench.runner import PaddedSource

    # Nothing listens on port 9: the record is built and queued, never delivered.
    producer = WeatherProducer("127.0.0.1:9", "unused", {"log_level": 0})
    source = PaddedSource(make_source("synthetic"), 2000)
    record = producer.send("bench-0001", 1_790_000_000_000, source.observe("bench-0001", 1_790_000_000_000))
    assert abs(len(encode(record)) - 2000) <= 40
