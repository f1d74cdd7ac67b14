"""Where the pipeline lost, duplicated or dropped what it was given: the per-stage audit of a step.

The window accounting (pipeline.accounting) says which (station, window)
pairs the serving API is missing or holds with the wrong count. This module
says at which stage each such gap arose and what kind of gap it is, by
following the window's messages through the pipeline's topics:

    acked by Kafka -> in the raw topic -> in a feature row (Spark) ->
    in a prediction (Ray) -> served by the API

* stage: the first stage whose output lacks (or over-counts) the window;
* kind: `lost` (fewer messages than acknowledged, no reason recorded),
  `dropped_late` (fewer, while Spark reported rows dropped behind its
  watermark in the step), or `duplicated` (more messages than acknowledged:
  some were counted twice, e.g. replayed after a recovery).

Counts are in messages, so they add up with the accounting's lost messages.
Reading the topics is done only for a step with gaps: a complete step has
nothing to explain.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.accounting import Accounting
from pipeline.config import StackConfig
from pipeline.kafka_topics import read_topic

STAGES = ("kafka", "spark", "ray", "api")
KINDS = ("lost", "dropped_late", "duplicated")

WindowKey = tuple[str, int]  # (station, window start ms)


@dataclass(frozen=True)
class Gap:
    station: str
    window_start: int
    stage: str  # one of STAGES
    kind: str  # one of KINDS
    messages: int  # how many messages the stage lost, dropped or counted twice


@dataclass(frozen=True)
class StageFlow:
    """What each stage holds for the step's stations, read back from the topics and the API."""

    raw: set[tuple[str, int]]  # (station, seq) in the raw topic
    features: dict[WindowKey, list[int]]  # every feature row written per window: its count
    predictions: set[WindowKey]  # windows with a prediction in the predictions topic
    served: dict[WindowKey, int]  # windows the API serves: their count


def locate_gaps(
    acked: Mapping[tuple[str, int], int],
    window_ms: int,
    flow: StageFlow,
    late_dropped_rows: int = 0,
) -> list[Gap]:
    """Every gap between what was acknowledged (`acked`: (station, seq) -> event ms) and what was served."""
    expected: dict[WindowKey, list[tuple[str, int]]] = defaultdict(list)
    for (station, seq), event_ms in acked.items():
        expected[(station, event_ms - event_ms % window_ms)].append((station, seq))
    short_kind = "dropped_late" if late_dropped_rows > 0 else "lost"
    gaps: list[Gap] = []
    # Windows served but never acknowledged are the accounting's "unexpected" windows, not gaps.
    for key in sorted(expected):
        messages = expected[key]
        want = len(messages)
        if flow.served.get(key) == want:
            continue
        station, start = key
        in_raw = sum(1 for m in messages if m in flow.raw)
        if in_raw < want:
            gaps.append(Gap(station, start, "kafka", "lost", want - in_raw))
            want = in_raw
        counted = max(flow.features.get(key, [0]))
        if counted != want:
            kind = "duplicated" if counted > want else short_kind
            gaps.append(Gap(station, start, "spark", kind, abs(counted - want)))
            continue
        if key not in flow.predictions:
            gaps.append(Gap(station, start, "ray", "lost", counted))
            continue
        served = flow.served.get(key, 0)
        if served != counted:
            kind = "duplicated" if served > counted else "lost"
            gaps.append(Gap(station, start, "api", kind, abs(served - counted)))
    return gaps


def gaps_by_stage(gaps: Iterable[Gap]) -> dict[str, dict[str, int]]:
    """Messages per stage and kind, every stage and kind present (zeros included)."""
    totals: Counter[tuple[str, str]] = Counter()
    for gap in gaps:
        totals[(gap.stage, gap.kind)] += gap.messages
    return {stage: {kind: totals[(stage, kind)] for kind in KINDS} for stage in STAGES}


def gap_text(gaps: dict[str, dict[str, int]] | None) -> str:
    """'spark: 3 lost, 2 dropped_late' from a step's gaps by stage and kind; 'none' when there are none."""
    parts = [
        f"{stage}: " + ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in kinds.items() if n)
        for stage, kinds in (gaps or {}).items()
        if any(kinds.values())
    ]
    return "; ".join(parts) or "none"


def _window_key(raw_key: bytes | None) -> WindowKey | None:
    if not raw_key:
        return None
    station, _, start = raw_key.decode(errors="replace").rpartition("|")
    return (station, int(start)) if station and start.lstrip("-").isdigit() else None


def read_flow(
    config: StackConfig,
    input_topic: str,
    station_prefix: str,
    since_ms: int,
    served_rows: Iterable[Mapping[str, Any]],
) -> StageFlow:
    """The step's records in the raw, features and predictions topics (from `since_ms` on)."""
    servers = config.kafka.bootstrap_servers
    raw: set[tuple[str, int]] = set()
    for _, _, key, value in read_topic(servers, input_topic, timeout_s=60, since_ms=since_ms):
        if key and key.decode(errors="replace").startswith(station_prefix) and value:
            try:
                record = json.loads(value)
                raw.add((str(record["station_id"]), int(record["seq"])))
            except (ValueError, KeyError, TypeError):
                continue  # not a well-formed observation: the dead-letter accounting covers it
    features: dict[WindowKey, list[int]] = defaultdict(list)
    for _, _, key, value in read_topic(servers, config.kafka.features_topic, timeout_s=60, since_ms=since_ms):
        window = _window_key(key)
        if window and window[0].startswith(station_prefix) and value:
            features[window].append(int(json.loads(value).get("count") or 0))
    predictions = {
        window
        for _, _, key, _ in read_topic(
            servers, config.kafka.predictions_topic, timeout_s=60, since_ms=since_ms
        )
        if (window := _window_key(key)) and window[0].startswith(station_prefix)
    }
    served = {(str(r["station_id"]), int(r["window_start"])): int(r["count"]) for r in served_rows}
    return StageFlow(raw=raw, features=dict(features), predictions=predictions, served=served)


def audit(
    config: StackConfig,
    input_topic: str,
    station_prefix: str,
    since_ms: int,
    acked: Mapping[tuple[str, int], int],
    window_ms: int,
    accounting: Accounting,
    served_rows: Iterable[Mapping[str, Any]],
    late_dropped_rows: int = 0,
) -> list[Gap]:
    """The gaps of a step, located by stage; reads the topics only when the accounting has gaps."""
    if accounting.complete:
        return []
    flow = read_flow(config, input_topic, station_prefix, since_ms, served_rows)
    return locate_gaps(acked, window_ms, flow, late_dropped_rows)
