"""The inference driver's Ray actor pool: sizing, dispatch, retries, rollout.

This module owns everything the driver does through Ray:

* sizing the pool to the ALIVE Ray worker nodes (every node but the head),
  never below `min_actors`, growing and shrinking it without blocking
  inference. The floor is spare capacity for a node loss: an actor whose
  node died is kept (Ray restarts it on a surviving node) instead of being
  dropped with its node, so the pool is whole again seconds after the loss;
* splitting a batch of feature rows across the ready actors and gathering
  the results with a per-call timeout, re-dispatching a chunk whose call
  timed out or whose actor failed, and hedging: a call still running after
  `hedge_after_s` is sent once more to another actor. A dead node's calls
  hang until Ray declares the node dead and restarts its actors; the hedge
  bounds that stall by seconds instead. Predictions are idempotent, so a
  chunk computed twice is harmless: the first result for each row is kept;
* model rollout: telling every actor to load a new version and checking,
  on every maintenance pass, that each actor (restarted ones included)
  serves the target version.

It imports Ray at module level. The driver imports it only after it has set
RAY_AUTH_MODE, because Ray reads that variable once, when it is imported.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError

from pipeline.inference.actors import DEFAULT_ACTOR_CPUS, RemoteInferenceActor, actor_options

log = logging.getLogger("pipeline.inference.pool")

HEAD_NODE_RESOURCE = "node:__internal_head__"
NODE_LOSS_LOG = 20  # node losses kept in the pool snapshot
RELOAD_BACKOFF_S = 30.0


class InferenceAborted(RuntimeError):
    """The caller asked to stop while a batch was still being inferred."""


class NoActorsError(RuntimeError):
    """No inference actor became ready in time (no worker node, or no model)."""


def alive_worker_node_ids(nodes: Sequence[dict[str, Any]]) -> list[str]:
    """Node ids of alive Ray nodes other than the head (from `ray.nodes()`)."""
    return sorted(
        str(node["NodeID"])
        for node in nodes
        if node.get("Alive") and HEAD_NODE_RESOURCE not in (node.get("Resources") or {})
    )


def split_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges cutting `total` rows into at most `parts` near-equal non-empty chunks."""
    if total <= 0:
        return []
    parts = max(1, min(parts, total))
    size, extra = divmod(total, parts)
    ranges = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass
class CallRecord:
    """One successful actor call, for the driver's latency statistics."""

    rows: int
    latency_ms: float  # driver side: dispatch -> result
    actor_ms: float | None = None  # inside the actor: ray_end - ray_start (ms resolution)


@dataclass
class InferResult:
    """Outcome of `ActorPool.infer` for one batch."""

    predictions: list[dict[str, Any]]
    failed: list[tuple[dict[str, Any], str]]  # (feature row, dead-letter reason)
    calls: list[CallRecord] = field(default_factory=list)
    redispatches: int = 0
    hedges: int = 0  # calls sent a second time because the first was slow
    timeouts: int = 0
    actor_errors: int = 0
    app_errors: int = 0


@dataclass
class _Member:
    """One actor of the pool and what the driver knows about it."""

    seq: int
    handle: Any
    created_perf: float  # perf_counter at creation: startup time
    created_at: float  # pool clock at creation: start-up watchdog
    created_ms: int
    ready_ref: Any = None  # stats() call used as the readiness probe
    ready: bool = False
    dead: bool = False
    startup_ms: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    stats_ref: Any = None
    stats_sent: float = 0.0
    reload_ref: Any = None
    reload_version: int | None = None
    reload_not_before: float = 0.0  # back-off after a failed reload (e.g. unreadable model file)
    suspect_until: float = 0.0  # do not prefer this actor before then (timed out or failed)
    inflight: int = 0
    restarts: int = 0
    pending_warned: bool = False
    restarting: bool = False  # its node died; Ray is restarting it elsewhere
    replaces: _Member | None = None  # rebalancing: the actor this one retires once ready
    target_node: str | None = None  # node it was placed on (soft affinity), None = SPREAD

    @property
    def node_id(self) -> str | None:
        return self.stats.get("node_id")

    @property
    def placed_on(self) -> str | None:
        """Where it runs (ready) or is meant to run (starting)."""
        return self.node_id if self.ready else self.target_node


class ActorPool:
    """A pool of InferenceActor sized to the alive Ray worker nodes.

    Not thread-safe: the driver calls it from its single main loop. No method
    blocks for long except `infer` (bounded by the call timeout and retries)
    and `wait_ready` (bounded by its timeout).
    """

    def __init__(
        self,
        model_dir: Path,
        target_version: int | None,
        *,
        call_timeout_s: float,
        actor_cpus: float = DEFAULT_ACTOR_CPUS,
        actors_per_node: int = 1,
        min_actors: int = 1,
        hedge_after_s: float | None = None,
        max_app_attempts: int = 3,
        stats_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model_dir = model_dir
        self.target_version = target_version
        self.call_timeout_s = call_timeout_s
        self.actor_cpus = actor_cpus
        self.actors_per_node = max(1, actors_per_node)
        self.min_actors = max(1, min_actors)
        self.hedge_after_s = hedge_after_s
        self.max_app_attempts = max(1, max_app_attempts)
        self.stats_timeout_s = stats_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._seq = itertools.count()
        self._rr = itertools.count()
        self.members: list[_Member] = []
        self.alive_workers: list[str] = []
        self.target_size = 1
        # Counters the driver turns into stats and metrics (monotonic totals).
        self.resizes = 0
        self.created = 0
        self.removed = 0
        self.creation_failures = 0
        self.restarts = 0
        self.node_losses = 0  # actors whose node died under them
        # The latest node losses: when each was noticed and when its actor served again (epoch ms).
        self.node_loss_log: deque[dict[str, Any]] = deque(maxlen=NODE_LOSS_LOG)
        self.rebalances = 0
        self.startup_ms: list[float] = []  # per actor, appended when it becomes ready
        self.rollouts_done: list[tuple[int, float]] = []  # (version, ms until all actors served it)
        self._rollout_started: float | None = None
        self._last_maintain = 0.0

    # ----------------------------------------------------------------- state

    def ready_members(self) -> list[_Member]:
        return [m for m in self.members if m.ready and not m.dead]

    def starting_members(self) -> list[_Member]:
        return [m for m in self.members if not m.ready and not m.dead]

    def snapshot(self) -> dict[str, Any]:
        """Pool state for the driver's stats line."""
        per_node: dict[str, int] = {}
        for m in self.ready_members():
            node = (m.node_id or "unknown")[:12]
            per_node[node] = per_node.get(node, 0) + 1
        rss = [m.stats.get("rss_bytes") for m in self.ready_members() if m.stats.get("rss_bytes")]
        return {
            "actors": len(self.ready_members()),
            "actors_starting": len(self.starting_members()),
            "target_actors": self.target_size,
            "alive_worker_nodes": len(self.alive_workers),
            "actors_per_node": per_node,
            "actor_rss_mb_max": round(max(rss) / 1e6, 1) if rss else None,
            "actor_versions": sorted({m.stats.get("model_version") for m in self.ready_members()} - {None}),
            "target_model_version": self.target_version,
            "pool_resizes": self.resizes,
            "actors_created": self.created,
            "actors_removed": self.removed,
            "actor_creation_failures": self.creation_failures,
            "actor_restarts": self.restarts,
            "actor_node_losses": self.node_losses,
            "node_loss_log": [dict(entry) for entry in self.node_loss_log],
            "actor_rebalances": self.rebalances,
            "actor_stats": [
                {
                    k: m.stats.get(k)
                    for k in ("actor_id", "node_id", "pid", "model_version", "calls", "rows", "errors")
                }
                | {"startup_ms": m.startup_ms, "model_load_ms": m.stats.get("model_load_ms")}
                for m in self.ready_members()
            ],
        }

    # ----------------------------------------------------------- maintenance

    def _create(self, node_id: str | None) -> None:
        handle = RemoteInferenceActor.options(**actor_options(self.actor_cpus, node_id)).remote(
            str(self.model_dir), None
        )
        member = _Member(
            seq=next(self._seq),
            handle=handle,
            created_perf=time.perf_counter(),
            created_at=self._clock(),
            created_ms=time.time_ns() // 1_000_000,
            target_node=node_id,
        )
        member.ready_ref = handle.stats.remote()
        self.members.append(member)
        self.created += 1

    def _remove(self, member: _Member, why: str) -> None:
        log.info(
            "removing actor seq=%d (%s) node=%s: %s",
            member.seq,
            member.stats.get("actor_id"),
            member.node_id,
            why,
        )
        try:
            ray.kill(member.handle, no_restart=True)
        except RayError as exc:  # already gone: nothing to do
            log.debug("kill of actor seq=%d failed: %s", member.seq, exc)
        member.dead = True
        self.removed += 1
        if member.restarting:
            self._note_back(member)  # the pool no longer waits for it

    def _note_back(self, member: _Member) -> None:
        for entry in self.node_loss_log:
            if entry["actor"] == member.seq and entry["back_ms"] is None:
                entry["back_ms"] = _now_ms()

    def _record_stats(self, member: _Member, stats: dict[str, Any]) -> None:
        old_pid = member.stats.get("pid")
        if old_pid is not None and stats.get("pid") != old_pid:
            # Same handle, new process: Ray restarted the actor (its node died or it crashed).
            member.restarts += 1
            self.restarts += 1
            log.warning(
                "actor seq=%d restarted: pid %s -> %s, node %s -> %s",
                member.seq,
                old_pid,
                stats.get("pid"),
                (member.node_id or "?")[:12],
                str(stats.get("node_id"))[:12],
            )
        member.stats = stats

    def _harvest(self) -> None:
        """Collect finished readiness, stats and reload calls without blocking."""
        refs: dict[Any, tuple[_Member, str]] = {}
        for m in self.members:
            if m.dead:
                continue
            if not m.ready and m.ready_ref is not None:
                refs[m.ready_ref] = (m, "ready")
            if m.stats_ref is not None:
                refs[m.stats_ref] = (m, "stats")
            if m.reload_ref is not None:
                refs[m.reload_ref] = (m, "reload")
        if not refs:
            return
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        now = self._clock()
        for ref in done:
            member, kind = refs[ref]
            try:
                result = ray.get(ref)
            except RayError as exc:
                self._on_call_error(member, kind, exc)
                continue
            if kind == "ready":
                member.ready = True
                member.ready_ref = None
                self._record_stats(member, result)
                node = str(result.get("node_id"))[:12]
                if member.restarting:  # back after a node loss: not a new actor's start-up
                    member.restarting = False
                    self._note_back(member)
                    log.info("actor seq=%d serves again on node %s", member.seq, node)
                    continue
                member.startup_ms = (time.perf_counter() - member.created_perf) * 1000.0
                self.startup_ms.append(member.startup_ms)
                log.info(
                    "actor seq=%d ready in %.0f ms on node %s (model v%s loaded in %.2f ms)",
                    member.seq,
                    member.startup_ms,
                    node,
                    result.get("model_version"),
                    result.get("model_load_ms", 0.0),
                )
            elif kind == "stats":
                member.stats_ref = None
                self._record_stats(member, result)
            else:
                member.reload_ref = None
                self._record_stats(member, result)
        for m in self.members:
            if m.stats_ref is not None and now - m.stats_sent > self.stats_timeout_s:
                # Busy or restarting: drop the probe; the actor becomes a shrink candidate.
                m.stats_ref = None
                m.suspect_until = max(m.suspect_until, now + self.stats_timeout_s)

    def _on_call_error(self, member: _Member, kind: str, exc: BaseException) -> None:
        if kind == "ready":
            member.ready_ref = None
        elif kind == "stats":
            member.stats_ref = None
        else:
            member.reload_ref = None
        if isinstance(exc, ActorDiedError):
            # Permanently dead (e.g. its constructor raised: no model file): replaced by maintain().
            if kind == "ready":
                self.creation_failures += 1
            log.error("actor seq=%d is dead (%s call): %s", member.seq, kind, _short(exc))
            member.dead = True
            self.removed += 1
        else:
            log.warning("actor seq=%d %s call failed: %s", member.seq, kind, _short(exc))
            member.suspect_until = self._clock() + 2.0
            if kind == "reload":
                member.reload_not_before = self._clock() + RELOAD_BACKOFF_S

    def maintain(self) -> None:
        """Resize to the alive worker nodes, refresh stats, finish rollouts. Non-blocking."""
        self._last_maintain = self._clock()
        self._harvest()
        self.members = [m for m in self.members if not m.dead]
        try:
            self.alive_workers = alive_worker_node_ids(ray.nodes())
        except RayError as exc:  # GCS briefly unreachable: keep the last known sizing
            log.warning("cannot list Ray nodes: %s", _short(exc))
        else:
            self._mark_node_losses()
        target = max(self.min_actors, len(self.alive_workers) * self.actors_per_node)
        if target != self.target_size:
            log.info(
                "pool target %d -> %d actors (%d alive worker nodes)",
                self.target_size,
                target,
                len(self.alive_workers),
            )
            self.target_size = target
        self._retire_replaced()
        # A rebalancing replacement and the actor it retires count once.
        current = len(self.members) - sum(1 for m in self.members if m.replaces is not None)
        if current < target:
            for _ in range(target - current):
                self._create(self._emptiest_node())
            self.resizes += 1
        elif current > target:
            alive = set(self.alive_workers)
            now = self._clock()

            # Remove first what is least useful: not started yet, on a dead node,
            # unresponsive, then the newest (older actors are warm).
            def useless_first(m: _Member) -> tuple[int, int, int, int]:
                return (
                    0 if not m.ready else 1,
                    0 if m.node_id not in alive else 1,
                    0 if m.suspect_until > now else 1,
                    -m.seq,
                )

            for member in sorted(self.members, key=useless_first)[: current - target]:
                self._remove(member, "pool shrinks to the alive worker nodes")
            self.members = [m for m in self.members if not m.dead]
            self.resizes += 1
        else:
            self._rebalance()
        now = self._clock()
        for m in self.starting_members():
            if m.ready_ref is None:
                # The last probe failed without the actor being dead (restarting): probe again.
                m.ready_ref = m.handle.stats.remote()
            if not m.pending_warned and now - m.created_at > 60:
                m.pending_warned = True
                log.warning("actor seq=%d not ready after 60 s (no room on any worker node?)", m.seq)
        for m in self.ready_members():
            if m.stats_ref is None:
                m.stats_ref = m.handle.stats.remote()
                m.stats_sent = now
            if (
                self.target_version is not None
                and m.reload_ref is None
                and now >= m.reload_not_before
                and m.stats.get("model_version") not in (None, self.target_version)
            ):
                m.reload_ref = m.handle.reload.remote(self.target_version)
                m.reload_version = self.target_version
        self._check_rollout()

    def _mark_node_losses(self) -> None:
        """Ready actors whose node is no longer alive are restarting: stop dispatching to them.

        Ray restarts them on a surviving node (max_restarts=-1, soft affinity);
        the readiness probe sent by maintain() answers once one is up again.
        """
        alive = set(self.alive_workers)
        for m in self.ready_members():
            if m.node_id is not None and m.node_id not in alive:
                log.warning(
                    "actor seq=%d lost its node %s; waiting for Ray to restart it", m.seq, m.node_id[:12]
                )
                m.ready = False
                m.restarting = True
                m.ready_ref = None
                m.stats_ref = None
                self.node_loss_log.append(
                    {"actor": m.seq, "node": m.node_id[:12], "lost_ms": _now_ms(), "back_ms": None}
                )
                m.created_at = self._clock()  # the not-ready watchdog counts from the loss
                m.pending_warned = False
                self.node_losses += 1

    def _placement(self) -> dict[str, list[_Member]]:
        """Actors (ready or starting) per alive worker node."""
        placed: dict[str, list[_Member]] = {node: [] for node in self.alive_workers}
        for m in self.members:
            if not m.dead and m.placed_on in placed:
                placed[m.placed_on].append(m)
        return placed

    def _emptiest_node(self) -> str | None:
        """The alive worker node with the fewest actors, if below actors_per_node.

        SPREAD alone does not balance growth: Ray round-robins over nodes with
        room, so an actor added when a node rejoins often lands next to an
        existing one. Growth therefore targets the emptiest node with a *soft*
        node affinity (if that node dies, Ray restarts the actor elsewhere).
        """
        placed = self._placement()
        if not placed:
            return None
        node = min(sorted(placed), key=lambda n: len(placed[n]))
        return node if len(placed[node]) < self.actors_per_node else None

    def _rebalance(self) -> None:
        """Move one actor from a crowded node to an empty one (one move per pass).

        Make before break: the new actor starts on the empty node first and the
        old one is retired once the new one is ready and the old one idle, so
        the pool never serves with fewer actors than its target.
        """
        if self.starting_members() or any(m.replaces is not None for m in self.members):
            return
        placed = self._placement()
        crowded = [n for n, ms in placed.items() if len(ms) > self.actors_per_node]
        empty = [n for n, ms in placed.items() if len(ms) < self.actors_per_node]
        if not crowded or not empty:
            return
        victim = max(placed[crowded[0]], key=lambda m: m.seq)
        log.info(
            "rebalancing: starting an actor on node %s to replace actor seq=%d", empty[0][:12], victim.seq
        )
        self._create(empty[0])
        self.members[-1].replaces = victim
        self.rebalances += 1

    def _retire_replaced(self) -> None:
        """Retire the actors whose rebalancing replacement is ready, once they have no call in flight."""
        for m in self.ready_members():
            old = m.replaces
            if old is None:
                continue
            if old.dead:
                m.replaces = None
            elif old.inflight == 0:
                self._remove(old, f"replaced by actor seq={m.seq} on node {(m.node_id or '?')[:12]}")
                m.replaces = None
        self.members = [m for m in self.members if not m.dead]

    def _check_rollout(self) -> None:
        if self._rollout_started is None:
            return
        ready = self.ready_members()
        if ready and all(m.stats.get("model_version") == self.target_version for m in ready):
            elapsed = (self._clock() - self._rollout_started) * 1000.0
            self.rollouts_done.append((int(self.target_version or 0), elapsed))
            log.info(
                "model v%s served by all %d actors after %.0f ms", self.target_version, len(ready), elapsed
            )
            self._rollout_started = None

    def rollout(self, version: int) -> None:
        """Make every actor serve `version`; completes over the next maintenance passes."""
        log.info("rolling out model v%s (was v%s)", version, self.target_version)
        self.target_version = version
        self._rollout_started = self._clock()
        for m in self.ready_members():
            m.reload_ref = m.handle.reload.remote(version)
            m.reload_version = version

    def wait_ready(self, timeout_s: float, should_abort: Callable[[], bool] = lambda: False) -> None:
        """Block until at least one actor is ready (driver start-up)."""
        deadline = self._clock() + timeout_s
        while not self.ready_members():
            if should_abort():
                raise InferenceAborted("stopped while waiting for the first actor")
            if self._clock() > deadline:
                raise NoActorsError(
                    f"no inference actor ready after {timeout_s:.0f} s "
                    f"({len(self.alive_workers)} alive Ray worker nodes, "
                    f"{self.creation_failures} actor creation failures)"
                )
            self.maintain()
            starting = [m.ready_ref for m in self.starting_members() if m.ready_ref is not None]
            if starting:
                ray.wait(starting, num_returns=1, timeout=0.5)
            else:
                self._sleep(0.5)
        self.maintain()

    def shutdown(self) -> None:
        for m in self.members:
            if not m.dead:
                self._remove(m, "driver shutdown")
        self.members = []

    # -------------------------------------------------------------- dispatch

    def _pick(self, avoid: _Member | None) -> _Member | None:
        """A ready actor for the next chunk: not suspect, least loaded, round-robin."""
        candidates = self.ready_members()
        if not candidates:
            return None
        if len(candidates) > 1 and avoid is not None:
            candidates = [m for m in candidates if m is not avoid] or candidates
        now = self._clock()
        trusted = [m for m in candidates if m.suspect_until <= now] or candidates
        turn = next(self._rr)
        return min(trusted, key=lambda m: (m.inflight, (m.seq - turn) % (1 << 30)))

    def infer(
        self,
        rows: Sequence[dict[str, Any]],
        should_abort: Callable[[], bool] = lambda: False,
        tick: Callable[[], None] | None = None,
    ) -> InferResult:
        """Predictions for `rows` (same order), re-dispatching chunks until each succeeds.

        Timeouts and actor failures (node death, restart, kill) are retried on
        another actor without limit, since the cluster heals; a call slower
        than `hedge_after_s` is also sent to a second actor and the first
        answer for each row wins. A chunk whose model call raises is split in
        two to isolate the bad row, and a single row failing
        `max_app_attempts` times is returned in `failed`.
        Raises InferenceAborted when `should_abort()` turns true. `tick` is
        called on every wait round, so the caller's periodic work (pool
        maintenance, stats) goes on during a long stall; it must be cheap and
        rate-limit itself.
        """
        result = InferResult(predictions=[], failed=[])
        if not rows:
            return result
        while not self.ready_members():
            # Every actor gone at once (all worker nodes died): wait for replacements.
            if should_abort():
                raise InferenceAborted("stopped while no inference actor was ready")
            self.maintain()
            starting = [m.ready_ref for m in self.starting_members() if m.ready_ref is not None]
            if starting:
                ray.wait(starting, num_returns=1, timeout=0.5)
            else:
                self._sleep(0.5)

        batch = _Batch(len(rows))
        attempts: dict[tuple[int, int], int] = {}  # app-error attempts per chunk range
        queue: list[tuple[float, int, int, _Member | None]] = [
            (0.0, start, end, None) for start, end in split_ranges(len(rows), len(self.ready_members()))
        ]
        pending: dict[Any, _Call] = {}
        backoff = 0.25

        def send(start: int, end: int, member: _Member, now: float, hedge: bool = False) -> None:
            ref = member.handle.predict.remote(list(rows[start:end]))
            member.inflight += 1
            pending[ref] = _Call(start, end, member, now, hedged=hedge)

        while batch.remaining:
            if should_abort():
                raise InferenceAborted("stopped during inference")
            if tick is not None:
                tick()
            now = self._clock()
            later: list[tuple[float, int, int, _Member | None]] = []
            for not_before, start, end, avoid in queue:
                if batch.settled(start, end):
                    continue  # a hedge or an earlier attempt already answered these rows
                member = self._pick(avoid) if not_before <= now else None
                if member is None:
                    later.append(
                        (max(not_before, now + 0.2) if not_before <= now else not_before, start, end, avoid)
                    )
                    continue
                send(start, end, member, now)
            queue = later
            self._hedge(pending, batch, now, result, send)
            if not pending:
                # Nothing in flight: chunks wait for a back-off to expire, or for an
                # actor (all gone: maintenance brings replacements).
                if now - self._last_maintain > 1.0:
                    self.maintain()
                due = min((nb for nb, _, _, _ in queue), default=now + 0.05)
                self._sleep(min(0.5, max(0.01, due - now)))
                continue

            oldest = min(call.sent for call in pending.values())
            wait_s = max(0.0, min(0.25, oldest + self.call_timeout_s - now))
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait_s)
            now = self._clock()
            for ref in ready:
                call = pending.pop(ref)
                start, end, member = call.start, call.end, call.member
                member.inflight -= 1
                try:
                    out = ray.get(ref, timeout=0)
                except GetTimeoutError:  # cannot happen for a ready ref; treat like a timeout
                    result.timeouts += 1
                    queue.append((now, start, end, member))
                    continue
                except RayActorError as exc:
                    # Actor died, is restarting, or its node is gone: run the chunk elsewhere.
                    result.actor_errors += 1
                    if isinstance(exc, ActorDiedError) and not member.dead:
                        member.dead = True
                        self.removed += 1
                    member.suspect_until = now + 2.0
                    if not batch.settled(start, end):
                        result.redispatches += 1
                        log.warning(
                            "actor seq=%d call failed (%s); re-dispatching %d rows",
                            member.seq,
                            _short(exc),
                            end - start,
                        )
                        queue.append((now + backoff, start, end, member))
                    continue
                except RayTaskError as exc:
                    if batch.settled(start, end):
                        continue
                    result.app_errors += 1
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    if end - start > 1:
                        mid = (start + end) // 2
                        queue.append((now, start, mid, None))
                        queue.append((now, mid, end, None))
                        result.redispatches += 2
                        continue
                    tries = attempts.get((start, end), 0) + 1
                    attempts[(start, end)] = tries
                    if tries >= self.max_app_attempts:
                        reason = f"inference_error:{type(cause).__name__}:{str(cause)[:200]}"
                        log.error(
                            "row %r failed %d times, dead-lettering: %s", _row_key(rows[start]), tries, reason
                        )
                        result.failed.append((dict(rows[start]), reason))
                        batch.settle(start, [None])
                    else:
                        result.redispatches += 1
                        queue.append((now, start, end, member))
                    continue
                except RayError as exc:
                    # Object lost, worker crashed, ...: the system's fault, not the row's.
                    result.actor_errors += 1
                    member.suspect_until = now + 2.0
                    if not batch.settled(start, end):
                        result.redispatches += 1
                        log.warning("actor seq=%d call error (%s); re-dispatching", member.seq, _short(exc))
                        queue.append((now + backoff, start, end, member))
                    continue
                batch.settle(start, out)
                stamps = (out[0].get("ray_start"), out[0].get("ray_end")) if out else (None, None)
                span = stamps[1] - stamps[0] if None not in stamps else None
                result.calls.append(CallRecord(end - start, (now - call.sent) * 1000.0, span))
            for ref, call in list(pending.items()):
                if now - call.sent >= self.call_timeout_s:
                    # Give up on this call (Ray may still run it: harmless, result ignored).
                    del pending[ref]
                    call.member.inflight -= 1
                    call.member.suspect_until = now + self.call_timeout_s
                    result.timeouts += 1
                    if batch.settled(call.start, call.end):
                        continue
                    result.redispatches += 1
                    log.warning(
                        "actor seq=%d call timed out after %.1f s; re-dispatching %d rows",
                        call.member.seq,
                        self.call_timeout_s,
                        call.end - call.start,
                    )
                    queue.append((now, call.start, call.end, call.member))
            if any(m.dead for m in self.members):
                self.members = [m for m in self.members if not m.dead]

        for call in pending.values():
            call.member.inflight -= 1  # the slower copy of a hedged call: its answer is not needed
        result.predictions = batch.predictions()
        return result

    def _hedge(
        self,
        pending: dict[Any, _Call],
        batch: _Batch,
        now: float,
        result: InferResult,
        send: Callable[..., None],
    ) -> None:
        """Send each call slower than hedge_after_s once more, to another ready actor."""
        if self.hedge_after_s is None:
            return
        for call in list(pending.values()):
            if call.hedged or now - call.sent < self.hedge_after_s or batch.settled(call.start, call.end):
                continue
            call.hedged = True  # one hedge per call, whether or not an actor is free for it
            member = self._pick(call.member)
            if member is None or member is call.member:
                continue
            result.hedges += 1
            log.info(
                "actor seq=%d has not answered %d rows in %.1f s; hedging on actor seq=%d",
                call.member.seq,
                call.end - call.start,
                now - call.sent,
                member.seq,
            )
            send(call.start, call.end, member, now, hedge=True)


@dataclass
class _Call:
    """One predict call in flight."""

    start: int
    end: int
    member: _Member
    sent: float
    hedged: bool = False  # already hedged, or itself a hedge: no further copies


class _Batch:
    """Which rows of one infer() call have their answer (a prediction, or a failure)."""

    def __init__(self, size: int) -> None:
        self._slots: list[dict[str, Any] | None] = [None] * size
        self._done = [False] * size
        self.remaining = size

    def settled(self, start: int, end: int) -> bool:
        return all(self._done[start:end])

    def settle(self, start: int, answers: Sequence[dict[str, Any] | None]) -> None:
        """Record answers for rows start.. in order; rows already answered keep their first answer."""
        for i, answer in enumerate(answers):
            if not self._done[start + i]:
                self._done[start + i] = True
                self._slots[start + i] = answer
                self.remaining -= 1

    def predictions(self) -> list[dict[str, Any]]:
        return [slot for slot in self._slots if slot is not None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _row_key(row: dict[str, Any]) -> str:
    return f"{row.get('station_id')}|{row.get('window_start')}"
