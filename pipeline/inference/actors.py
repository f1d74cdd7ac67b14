"""Ray inference actors: the model-serving half of the inference stage.

This module owns:

* `build_predictions`: the pure function that turns feature rows into
  prediction rows (feature row fields, untouched, plus
  `schema.PREDICTION_FIELDS`). Unit tests call it without Ray.
* `InferenceActor`: a plain class that loads the model once, serves
  `predict` calls, reports `stats` and swaps model versions on `reload`.
  `RemoteInferenceActor` is its Ray actor class; the plain class stays
  usable (and testable) in-process.
* `actor_options`: the Ray options every inference actor is created with
  (restartable forever, retried forever, small CPU share, spread or a soft
  affinity to the node the pool chose).

The driver (pipeline.inference.driver) owns the pool, Kafka and retries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.model import TemperatureModel, load_model
from pipeline.schema import now_ms

# Fields of a feature row the model needs; every other field passes through.
REQUIRED_INPUTS = ("station_id", "window_start", "window_end", "temperature_mean")

# CPU share of one actor: small, so that when a worker node dies Ray can
# restart its actor on a surviving 1-CPU node next to the actor already there.
DEFAULT_ACTOR_CPUS = 0.25

# Two concurrent calls per actor: a `stats` or `reload` call is not queued
# behind a long `predict` (the counters and the model swap are lock-protected).
ACTOR_MAX_CONCURRENCY = 2


def build_predictions(
    model: TemperatureModel,
    features: Sequence[dict[str, Any]],
    actor_id: str,
    clock: Callable[[], int] = now_ms,
) -> list[dict[str, Any]]:
    """Predict the temperature `horizon_minutes` after each window's end.

    The model input is (temperature_mean, window_end): the window's mean is
    the "current" temperature and the window end its time. `ray_start` and
    `ray_end` bracket the model call (epoch ms, one pair per call, as the
    whole call is one vectorisable unit of work); `inference_ms` is its
    duration at microsecond resolution. Feature fields are copied,
    never overwritten; `features_kafka_time` (set by the driver) is kept and
    defaults to None so every prediction row has all PREDICTION_FIELDS.
    """
    inputs = [(float(row["temperature_mean"]), int(row["window_end"])) for row in features]
    ray_start = clock()
    began = time.perf_counter()
    predicted = model.predict(inputs)
    # The model call in fractional ms: ray_start/ray_end are whole epoch ms, too coarse for it.
    inference_ms = round((time.perf_counter() - began) * 1000, 3)
    ray_end = clock()
    out: list[dict[str, Any]] = []
    for row, value in zip(features, predicted, strict=True):
        prediction = dict(row)
        prediction.setdefault("features_kafka_time", None)
        prediction["model_version"] = model.version
        prediction["horizon_minutes"] = model.horizon_minutes
        prediction["predicted_temperature_c"] = float(value)
        prediction["ray_start"] = ray_start
        prediction["ray_end"] = ray_end
        prediction["inference_ms"] = inference_ms
        prediction["actor_id"] = actor_id
        out.append(prediction)
    return out


def _runtime_identity() -> tuple[str, str | None, bool]:
    """(actor id, node id, reconstructed?) inside Ray; a local id outside it."""
    try:
        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            actor_id = ctx.get_actor_id()
            if actor_id:
                # Ray 2.60 reads its own deprecated `actor_id` property in here.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reconstructed = bool(ctx.was_current_actor_reconstructed)
                return actor_id, ctx.get_node_id(), reconstructed
    except Exception as exc:  # identity is best effort, never fatal for serving
        logging.getLogger(__name__).warning("cannot read the Ray runtime context: %s", exc)
    return f"local-{uuid.uuid4().hex[:12]}", None, False


class InferenceActor:
    """Serves one model version at a time; safe for ACTOR_MAX_CONCURRENCY threads.

    `version=None` loads the version named by <model_dir>/CURRENT. The pool
    creates actors that way on purpose: Ray re-runs __init__ with the original
    arguments when it restarts an actor, so a restarted actor then picks up
    the version rolled out last instead of the one it was born with.
    """

    def __init__(self, model_dir: str, version: int | None = None) -> None:
        init_perf = time.perf_counter()
        self._init_start_ms = now_ms()
        self._model_dir = Path(model_dir)
        self._actor_id, self._node_id, self._reconstructed = _runtime_identity()
        self._pid = os.getpid()
        self._process = psutil.Process(self._pid)
        self._lock = threading.Lock()
        self._calls = 0
        self._rows = 0
        self._errors = 0
        self._reloads = 0
        self._compute_ns = 0
        self._model, self._load_ms = self._load(version)
        self._startup_ms = (time.perf_counter() - init_perf) * 1000.0
        self._ready_ms = now_ms()

    def _load(self, version: int | None) -> tuple[TemperatureModel, float]:
        started = time.perf_counter()
        model = load_model(self._model_dir, version)
        return model, (time.perf_counter() - started) * 1000.0

    def predict(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Prediction rows for `features`, in the same order."""
        model = self._model  # one consistent model for the whole call, even during a reload
        started = time.perf_counter_ns()
        try:
            out = build_predictions(model, features, self._actor_id)
        except Exception:
            with self._lock:
                self._errors += 1
            raise
        elapsed = time.perf_counter_ns() - started
        with self._lock:
            self._calls += 1
            self._rows += len(features)
            self._compute_ns += elapsed
        return out

    def reload(self, version: int | None = None) -> dict[str, Any]:
        """Load `version` (CURRENT if None) and serve it from the next call on."""
        model, load_ms = self._load(version)
        with self._lock:
            changed = model.version != self._model.version
            self._model = model
            self._load_ms = load_ms
            if changed:
                self._reloads += 1
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Counters and identity; also the readiness probe used by the pool."""
        try:
            rss = self._process.memory_info().rss
        except psutil.Error:
            rss = None
        with self._lock:
            return {
                "actor_id": self._actor_id,
                "node_id": self._node_id,
                "pid": self._pid,
                "reconstructed": self._reconstructed,
                "model_version": self._model.version,
                "model_load_ms": round(self._load_ms, 3),
                "startup_ms": round(self._startup_ms, 3),
                "init_start_ms": self._init_start_ms,
                "ready_ms": self._ready_ms,
                "calls": self._calls,
                "rows": self._rows,
                "errors": self._errors,
                "reloads": self._reloads,
                "compute_ms_total": round(self._compute_ns / 1e6, 3),
                "rss_bytes": rss,
            }


def actor_options(num_cpus: float = DEFAULT_ACTOR_CPUS, node_id: str | None = None) -> dict[str, Any]:
    """Ray options for an inference actor.

    max_restarts=-1 / max_task_retries=-1: a killed node's actor is restarted
    elsewhere and its pending calls re-run there (predictions are idempotent).
    Placement: SPREAD, or a *soft* affinity to `node_id` when the pool wants
    the actor on a particular node (soft, so a restart after that node's
    death still finds a home elsewhere).
    """
    strategy: Any = "SPREAD"
    if node_id is not None:
        strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    return {
        "num_cpus": num_cpus,
        "max_restarts": -1,
        "max_task_retries": -1,
        "max_concurrency": ACTOR_MAX_CONCURRENCY,
        "scheduling_strategy": strategy,
    }


# The Ray actor class. Declaring it needs no running Ray; workers import this
# module by name, so the repository must be on their sys.path (the driver
# passes it in the job config).
RemoteInferenceActor = ray.remote(InferenceActor)
