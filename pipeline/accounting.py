"""Matching what the pipeline served against what the producer had acknowledged.

Given the producer's delivery ledger (every acknowledged (station, seq) and
its event time) and the predictions the serving API holds, this module says,
per (station, window): how many observations were expected, how many the
served prediction covers, and whether the window is missing, short, or
served more than once. It also turns the trace stamps on each served row into
per-stage latency samples (T1..T6, window close, end to end).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pipeline.producer.producer import DeliveryLedger

PAGE = 1000


def fetch_predictions(api_url: str, station_prefix: str | None = None, timeout_s: float = 10.0) -> list[dict]:
    """Every prediction row the serving API holds (optionally for one station prefix), all pages."""
    rows: list[dict] = []
    offset = 0
    while True:
        query = {"limit": PAGE, "offset": offset}
        if station_prefix:
            query["station_prefix"] = station_prefix
        url = f"{api_url}/predictions?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            page = json.loads(resp.read())
        items = page["items"]
        rows.extend(items)
        if len(items) < PAGE:
            return rows
        offset += PAGE


def expected_windows(ledger: DeliveryLedger, window_ms: int, prefix: str) -> dict[tuple[str, int], int]:
    """(station, window start) -> number of acknowledged observations with an event time in it."""
    expected: Counter[tuple[str, int]] = Counter()
    for (station, _seq), event_ms in ledger.event_times.items():
        if station.startswith(prefix):
            expected[(station, event_ms - event_ms % window_ms)] += 1
    return dict(expected)


@dataclass
class Accounting:
    expected_messages: int
    served_messages: int
    expected_windows: int
    served_windows: int
    missing_windows: list[tuple[str, int]] = field(default_factory=list)
    short_windows: list[tuple[str, int, int, int]] = field(default_factory=list)  # key, expected, served
    unexpected_windows: list[tuple[str, int]] = field(default_factory=list)
    duplicate_deliveries: int = 0  # repeated prediction deliveries the API absorbed

    @property
    def lost_messages(self) -> int:
        return self.expected_messages - self.served_messages

    @property
    def complete(self) -> bool:
        return not (self.missing_windows or self.short_windows or self.unexpected_windows)

    def summary(self) -> dict[str, Any]:
        return {
            "expected_messages": self.expected_messages,
            "served_messages": self.served_messages,
            "lost_messages": self.lost_messages,
            "expected_windows": self.expected_windows,
            "served_windows": self.served_windows,
            "missing_windows": len(self.missing_windows),
            "short_windows": len(self.short_windows),
            "unexpected_windows": len(self.unexpected_windows),
            "duplicate_deliveries": self.duplicate_deliveries,
        }


def account(expected: dict[tuple[str, int], int], rows: list[dict]) -> Accounting:
    served = {(r["station_id"], int(r["window_start"])): r for r in rows}
    result = Accounting(
        expected_messages=sum(expected.values()),
        served_messages=sum(int(served[k]["count"]) for k in expected if k in served),
        expected_windows=len(expected),
        served_windows=len(served),
        duplicate_deliveries=sum(int(r.get("duplicates", 0)) for r in rows),
    )
    for key, count in sorted(expected.items()):
        row = served.get(key)
        if row is None:
            result.missing_windows.append(key)
        elif int(row["count"]) != count:
            result.short_windows.append((key[0], key[1], count, int(row["count"])))
    result.unexpected_windows = sorted(set(served) - set(expected))
    return result


# Stage latency definitions over one served row (all stamps epoch ms). T1 comes from the ledger.
STAGES: dict[str, tuple[str, str]] = {
    "T2 kafka->spark batch (max in window)": ("", "t2_max_ms"),
    "T3 spark batch->features in kafka": ("spark_time", "features_kafka_time"),
    "T4 features in kafka->ray start": ("features_kafka_time", "ray_start"),
    "T5 ray inference": ("", "inference_ms"),
    "T6 prediction in kafka->api": ("prediction_kafka_time", "api_time"),
    "window end->api (window close)": ("window_end", "api_time"),
    "latest ingestion->api (end to end)": ("ingestion_time_max", "api_time"),
}


def stage_latencies(rows: list[dict], ledger: DeliveryLedger | None = None) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = defaultdict(list)
    if ledger is not None:
        samples["T1 ingestion->kafka append"] = [float(v) for v in ledger.t1_ms]
        samples["producer ack (send->ack)"] = list(ledger.ack_latency_ms)
    for row in rows:
        for stage, (start, end) in STAGES.items():
            if not start:
                value = row.get(end)
                if value is not None:
                    samples[stage].append(float(value))
            elif row.get(start) is not None and row.get(end) is not None:
                # Negative values mean clock trouble between stamps: kept, never clamped.
                samples[stage].append(float(row[end]) - float(row[start]))
    return dict(samples)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of all samples (no interpolation, no sampling)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q / 100 * len(ordered) // 1)))  # ceil(q/100 * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]
