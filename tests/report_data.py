"""Stored runs for report tests: real run exports, plus a history and a seeded regression made from them.

The exports under tests/fixtures/results are real quick-profile runs. A
history is made by cloning one with every value jittered by a few percent
(seeded, so tests are repeatable); a regression by scaling chosen metrics
of a clone that starts after that history.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from weatherbench.store import ResultsStore

FIXTURES = Path(__file__).parent / "fixtures" / "results"
LATENCY_RUN = "20261127T054702Z-latency-cf93"
SPARK_SCALING_RUN = "20261127T050315Z-scalability-spark-61db"


def load_export(run_id: str) -> dict[str, Any]:
    with gzip.open(FIXTURES / f"{run_id}.json.gz", "rt") as handle:
        return json.load(handle)


def clone(
    exported: dict[str, Any],
    run_id: str,
    started_at: datetime,
    jitter: float = 0.0,
    scale: dict[str, float] | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """A copy of a run under a new id and start time, values jittered and/or scaled by metric name."""
    copied = copy.deepcopy(exported)
    run = copied["run"]
    duration = datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])
    run["run_id"] = run_id
    run["started_at"] = started_at.isoformat()
    run["finished_at"] = (started_at + duration).isoformat()
    rng = rng or random.Random(0)
    for metric in copied["metrics"]:
        if metric["value"] is None:
            continue
        factor = (scale or {}).get(metric["metric"], 1.0) * (1 + rng.uniform(-jitter, jitter))
        if metric["unit"] in ("messages", "windows", "samples", "probes", "partitions", "replicas"):
            factor = (scale or {}).get(metric["metric"], 1.0)  # counts stay whole
        metric["value"] *= factor
    return copied


def seed_history(
    store: ResultsStore,
    exported: dict[str, Any],
    runs: int,
    before: datetime,
    jitter: float = 0.05,
    seed: int = 7,
) -> list[str]:
    """``runs`` earlier runs of the same test, one a day, ending a day before ``before``; oldest first."""
    rng = random.Random(seed)
    test = exported["run"]["test"]
    ids = []
    for n in range(runs, 0, -1):
        started = before - timedelta(days=n)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-{test}-h{n:03d}"
        ids.append(store.import_run(clone(exported, run_id, started, jitter=jitter, rng=rng)))
    return ids
