"""The main job: the whole pipeline under synthetic load for about a minute, with counts and latencies.

Brings a fresh stack up (training the model with the batch layer first),
runs open-loop synthetic load, closes the last windows, waits until the
serving API holds every window, then prints per-stage message counts,
latency percentiles, loss/duplicate accounting, model error and the stack's
peak memory, and tears the stack down. Short windows (10 s) stand in for the
production 5-minute windows so a run takes minutes, not hours.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from pipeline.accounting import account, expected_windows, fetch_predictions, percentile, stage_latencies
from pipeline.config import StackConfig, duration_ms, load_config
from pipeline.kafka_topics import read_topic
from pipeline.model import load_model
from pipeline.producer.loadgen import LoadSpec, close_windows, run_open_loop
from pipeline.producer.observations import make_source
from pipeline.producer.producer import WeatherProducer
from pipeline.schema import now_ms
from pipeline.stack import get_stack
from pipeline.stack.base import Stack

# Short windows so that a one-minute run closes several of them.
QUICK_STREAMING = {"window": "10 seconds", "watermark": "3 seconds", "trigger": "2 seconds"}
STATION_PREFIX = "demo"


def quick_config(base: StackConfig) -> StackConfig:
    """The base configuration with short windows and its own state dir (so checkpoints never mix)."""
    return load_config(
        overrides={"state_dir": str(base.state_dir / "demo"), "spark": dict(QUICK_STREAMING)},
    )


class PeakMemory:
    """Samples the stack's total RSS every `interval_s` in the background."""

    def __init__(self, stack: Stack, interval_s: float = 2.0) -> None:
        self.stack = stack
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                total = sum(i.rss_bytes for i in self.stack.status().instances)
                self.peak_bytes = max(self.peak_bytes, total)
            except Exception:  # a component may be mid-restart; try again next tick
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_for_windows(api_url: str, expected: dict, timeout_s: float) -> list[dict]:
    """Poll the API until every expected window is served with its full count, or time out."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = fetch_predictions(api_url, station_prefix=STATION_PREFIX)
        if account(expected, rows).complete:
            return rows
        time.sleep(2)
    return rows


def _fmt(values: list[float]) -> str:
    if not values:
        return "no samples"
    cells = [f"p{q:g}={percentile(values, q):8.1f}" for q in (50, 95, 99)]
    return f"n={len(values):5d}  " + "  ".join(cells) + f"  max={max(values):8.1f}"


def run_demo(base: StackConfig, args: argparse.Namespace) -> int:
    config = quick_config(base)
    stack = get_stack(config)
    spec = LoadSpec(
        stations=args.stations,
        rate=args.rate,
        duration_s=args.warmup + args.duration,
        station_prefix=STATION_PREFIX,
    )
    window_ms = duration_ms(config.spark.window)
    print(f"== bringing the stack up (state in {config.state_dir})", flush=True)
    began = time.monotonic()
    try:
        stack.down(purge=True)  # a fresh run: no checkpoint, topic or API state from an earlier one
        with PeakMemory(stack) as memory:
            stack.up()
            up_seconds = time.monotonic() - began
            print(
                f"   up in {up_seconds:.1f} s: {json.dumps(getattr(stack, 'startup_seconds', {}))}",
                flush=True,
            )
            model = load_model(config.model_dir)
            print(
                f"== load: {spec.stations} stations, {spec.rate:g} msg/s, {spec.duration_s:g} s, "
                f"{config.spark.window} windows",
                flush=True,
            )
            producer = WeatherProducer(config.kafka.bootstrap_servers, config.kafka.raw_topic)
            measured_from_ms = now_ms() + int(args.warmup * 1000)
            result = run_open_loop(
                producer,
                make_source(args.source),
                spec,
                on_progress=lambda sent, total: print(f"   sent {sent}/{total}", flush=True),
            )
            close_windows(
                producer,
                make_source(args.source),
                result.last_event_ms,
                window_ms,
                duration_ms(config.spark.watermark),
            )
            expected = expected_windows(result.ledger, window_ms, STATION_PREFIX)
            rows = wait_for_windows(config.api.url, expected, timeout_s=180)
            accounting = account(expected, rows)
            features = [
                r
                for r in read_topic(config.kafka.bootstrap_servers, config.kafka.features_topic)
                if r[2] and r[2].startswith(STATION_PREFIX.encode())
            ]
            predictions = [
                r
                for r in read_topic(config.kafka.bootstrap_servers, config.kafka.predictions_topic)
                if r[2] and r[2].startswith(STATION_PREFIX.encode())
            ]
            deadletter = read_topic(config.kafka.bootstrap_servers, config.kafka.deadletter_topic)
            producer.flush(10)
            del producer  # before the broker stops, so the client does not log reconnect attempts
        # Loss is accounted over every window; latency only over windows after the warm-up.
        measured = [r for r in rows if r["window_start"] >= measured_from_ms]
        _print_report(
            result, accounting, rows, measured, features, predictions, deadletter, model, memory.peak_bytes
        )
        return 0 if accounting.complete and accounting.lost_messages == 0 else 1
    finally:
        if not args.keep_up:
            stack.down(purge=False)


def _print_report(
    result, accounting, rows, measured, features, predictions, deadletter, model, peak_bytes
) -> None:
    ledger = result.ledger
    acked = sum(len(v) for k, v in ledger.acked.items() if k.startswith(STATION_PREFIX))
    print("\n== per-stage message counts")
    offered = f"(offered {result.sent}, failed {len(ledger.failed)})"
    print(f"   {'raw observations acknowledged by Kafka':45s} {acked:8d}   {offered}")
    print(f"   {'dead-lettered records':45s} {len(deadletter):8d}")
    print(f"   {'feature rows (weather-features)':45s} {len(features):8d}")
    print(f"   {'prediction records (weather-predictions)':45s} {len(predictions):8d}")
    print(f"   {'(station, window) rows served by the API':45s} {len(rows):8d}")
    print(f"   {'observations covered by served windows':45s} {accounting.served_messages:8d}")
    print("\n== accounting: " + json.dumps(accounting.summary()))
    late = f"{result.behind_count} messages sent >100 ms late (max {result.max_behind_ms} ms)"
    rate = f"achieved {result.achieved_rate:.1f} of {result.offered_rate:g} msg/s offered"
    print(f"   open-loop sender: {late}; {rate}")
    scope = f"{len(measured)} windows after the warm-up"
    print(f"\n== latency (ms; {scope}; nearest-rank percentiles of all samples)")
    for stage, values in stage_latencies(measured, ledger).items():
        print(f"   {stage:42s} {_fmt(values)}")
    metrics = model.metrics
    print(
        f"\n== model v{model.version} ({model.name}, {model.horizon_minutes}-min horizon): hold-out MAE "
        f"{metrics.get('holdout_mae_c', float('nan')):.3f} C vs persistence "
        f"{metrics.get('persistence_mae_c', float('nan')):.3f} C"
    )
    print(
        f"== peak memory of the stack (sum of its processes' RSS, shared pages counted each time): "
        f"{peak_bytes / 1e9:.2f} GB"
    )
