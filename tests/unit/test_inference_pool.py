"""Actor pool sizing, placement, rollout and re-dispatch, against a scripted fake of Ray.

The fake replaces the few Ray calls the pool makes (wait, get, nodes, kill and
actor creation) and a manual clock, so timeouts and node deaths are exact and
the tests take milliseconds.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from pipeline.inference import pool as pool_module
from pipeline.inference.pool import ActorPool, InferenceAborted

WS = 1_767_225_600_000
N1, N2, N3 = ("11" * 28, "22" * 28, "33" * 28)  # Ray node ids are 28-byte hex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ref:
    """A result that is ready now, ready later (at a clock time), or never."""

    def __init__(
        self, value: Any = None, exc: BaseException | None = None, ready_at: float | None = 0.0
    ) -> None:
        self.value, self.exc, self.ready_at = value, exc, ready_at
        self.deferred: tuple[FakeActor, str, tuple[Any, ...]] | None = None

    def resolve(self) -> None:
        """A call queued while its actor was down runs once the actor is back (Ray's task retries)."""
        if self.deferred is not None and self.deferred[0].mode != "down":
            actor, method, args = self.deferred
            self.deferred = None
            done = actor.call(method, *args)
            self.value, self.exc, self.ready_at = done.value, done.exc, done.ready_at


class FakeActor:
    def __init__(self, ray: FakeRay, seq: int, node: str) -> None:
        self.ray, self.seq, self.node = ray, seq, node
        self.pid = 100 + seq
        self.version = ray.current_version
        self.killed = False
        self.mode = "ok"  # ok | hang | down (every call hangs) | unavailable | app_error_on:<station>
        self.calls: list[list[dict[str, Any]]] = []

    def stats(self) -> dict[str, Any]:
        return {
            "actor_id": f"a{self.seq}",
            "node_id": self.node,
            "pid": self.pid,
            "model_version": self.version,
        }

    def call(self, method: str, *args: Any) -> Ref:
        if self.killed:
            return Ref(exc=ActorDiedError())
        if self.mode == "down":
            ref = Ref(ready_at=None)
            ref.deferred = (self, method, args)
            return ref
        if method == "stats":
            return Ref(self.stats())
        if method == "reload":
            self.version = args[0]
            return Ref(self.stats())
        rows = args[0]
        self.calls.append(rows)
        if self.mode == "hang":
            return Ref(ready_at=None)
        if self.mode == "unavailable":
            return Ref(exc=ActorUnavailableError("restarting", None))
        if self.mode.startswith("app_error_on:"):
            bad = self.mode.split(":", 1)[1]
            if any(r["station_id"] == bad for r in rows):
                return Ref(exc=RayTaskError("predict", "traceback", ValueError(f"cannot predict {bad}")))
        stamps = {"ray_start": 50, "ray_end": 52, "actor_id": f"a{self.seq}", "model_version": self.version}
        return Ref([dict(r, **stamps) for r in rows])


class Method:
    def __init__(self, actor: FakeActor, name: str) -> None:
        self.actor, self.name = actor, name

    def remote(self, *args: Any) -> Ref:
        return self.actor.call(self.name, *args)


class Handle:
    def __init__(self, actor: FakeActor) -> None:
        self.actor = actor
        self.stats = Method(actor, "stats")
        self.predict = Method(actor, "predict")
        self.reload = Method(actor, "reload")


class FakeRay:
    """Stands in for `ray` and for `RemoteInferenceActor` inside pipeline.inference.pool."""

    def __init__(self, clock: Clock, nodes: list[str]) -> None:
        self.clock = clock
        self.node_ids = list(nodes)
        self.dead_nodes: set[str] = set()
        self.actors: list[FakeActor] = []
        self.current_version = 1
        self._seq = itertools.count()
        self._spread = itertools.count()

    # -- ray.*
    def nodes(self) -> list[dict[str, Any]]:
        head = {"NodeID": "head", "Alive": True, "Resources": {"node:__internal_head__": 1.0}}
        workers = [
            {"NodeID": n, "Alive": n not in self.dead_nodes, "Resources": {"CPU": 1.0}} for n in self.node_ids
        ]
        return [head, *workers]

    def wait(self, refs: list[Ref], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        def ready() -> list[Ref]:
            for r in refs:
                r.resolve()
            return [r for r in refs if r.ready_at is not None and r.ready_at <= self.clock.now]

        done = ready()
        if len(done) < num_returns and timeout:
            self.clock.now += timeout  # the time passes while waiting
            done = ready()
        return done, [r for r in refs if r not in done]

    def get(self, ref: Ref, timeout: float | None = None) -> Any:
        if ref.exc is not None:
            raise ref.exc
        return ref.value

    def kill(self, handle: Handle, no_restart: bool = True) -> None:
        handle.actor.killed = True

    # -- RemoteInferenceActor.options(...).remote(...)
    def options(self, **opts: Any) -> FakeRay:
        self._pending_opts = opts
        return self

    def remote(self, model_dir: str, version: int | None) -> Handle:
        strategy = self._pending_opts["scheduling_strategy"]
        alive = [n for n in self.node_ids if n not in self.dead_nodes]
        node = alive[next(self._spread) % len(alive)] if strategy == "SPREAD" else strategy.node_id
        actor = FakeActor(self, next(self._seq), node)
        self.actors.append(actor)
        return Handle(actor)

    def live_actors(self) -> list[FakeActor]:
        return [a for a in self.actors if not a.killed]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    clock = Clock()
    fr = FakeRay(clock, [N1, N2])
    monkeypatch.setattr(pool_module, "ray", fr)
    monkeypatch.setattr(pool_module, "RemoteInferenceActor", fr)
    return fr


def make_pool(fake: FakeRay, call_timeout_s: float = 5.0, **options: Any) -> ActorPool:
    def sleep(seconds: float) -> None:
        fake.clock.now += seconds

    pool = ActorPool(
        Path("/models"), 1, call_timeout_s=call_timeout_s, clock=fake.clock, sleep=sleep, **options
    )
    pool.wait_ready(10)
    return pool


def rows(n: int, prefix: str = "s") -> list[dict[str, Any]]:
    return [{"station_id": f"{prefix}{i}", "window_start": WS} for i in range(n)]


def test_pool_has_one_actor_per_alive_worker_node(fake: FakeRay) -> None:
    pool = make_pool(fake)
    assert len(pool.ready_members()) == 2
    assert sorted(a.node for a in fake.live_actors()) == [N1, N2]
    assert pool.snapshot()["actors_per_node"] == {N1[:12]: 1, N2[:12]: 1}


def test_pool_shrinks_on_node_death_removing_the_dead_nodes_actor(fake: FakeRay) -> None:
    pool = make_pool(fake)
    fake.dead_nodes.add(N1)
    pool.maintain()
    live = fake.live_actors()
    assert [a.node for a in live] == [N2]
    assert pool.target_size == 1
    # Never below one actor, even with no worker node left.
    fake.dead_nodes.add(N2)
    pool.maintain()
    assert pool.target_size == 1


def test_pool_grows_onto_the_node_that_joined(fake: FakeRay) -> None:
    pool = make_pool(fake)
    fake.node_ids.append(N3)
    pool.maintain()  # creates the actor, pinned to n3
    pool.maintain()  # sees it ready
    assert sorted(a.node for a in fake.live_actors()) == [N1, N2, N3]
    assert len(pool.ready_members()) == 3
    assert pool.resizes >= 2


def test_pool_rebalances_two_actors_sharing_a_node(fake: FakeRay) -> None:
    pool = make_pool(fake)
    # Simulate Ray restarting n1's actor on n2 (n1 died), then n1 coming back.
    moved = next(a for a in fake.actors if a.node == N1)
    moved.node, moved.pid = N2, 999
    pool.maintain()  # stats now show both actors on n2
    pool.maintain()  # rebalance: one leaves n2 for the empty n1
    pool.maintain()
    assert sorted(a.node for a in fake.live_actors()) == [N1, N2]
    assert pool.rebalances == 1
    assert pool.restarts == 1  # the pid change was noticed


def test_rows_are_split_across_actors_and_returned_in_order(fake: FakeRay) -> None:
    pool = make_pool(fake)
    result = pool.infer(rows(5))
    assert [p["station_id"] for p in result.predictions] == [f"s{i}" for i in range(5)]
    assert sorted(len(c) for a in fake.actors for c in a.calls) == [2, 3]
    assert {p["actor_id"] for p in result.predictions} == {"a0", "a1"}
    assert result.redispatches == 0
    assert [(c.rows, c.actor_ms) for c in sorted(result.calls, key=lambda c: c.rows)] == [(2, 2), (3, 2)]


def test_a_timed_out_chunk_is_redispatched_to_another_actor(fake: FakeRay) -> None:
    pool = make_pool(fake, call_timeout_s=5.0)
    fake.actors[0].mode = "hang"
    start = fake.clock.now
    result = pool.infer(rows(4))
    assert [p["station_id"] for p in result.predictions] == ["s0", "s1", "s2", "s3"]
    assert {p["actor_id"] for p in result.predictions} == {"a1"}
    assert result.timeouts == 1
    assert result.redispatches == 1
    assert 5.0 <= fake.clock.now - start < 6.0  # waited one call timeout, not more


def test_an_unavailable_actor_is_retried_elsewhere(fake: FakeRay) -> None:
    pool = make_pool(fake)
    fake.actors[1].mode = "unavailable"
    result = pool.infer(rows(6))
    assert len(result.predictions) == 6
    assert {p["actor_id"] for p in result.predictions} == {"a0"}
    assert result.actor_errors == 1


def test_a_killed_actor_is_dropped_and_its_chunk_finished_by_another(fake: FakeRay) -> None:
    pool = make_pool(fake)
    fake.actors[0].killed = True
    result = pool.infer(rows(4))
    assert len(result.predictions) == 4
    assert len(pool.ready_members()) == 1
    pool.maintain()  # replaces it: two worker nodes are still alive
    pool.maintain()
    assert len(pool.ready_members()) == 2


def test_a_row_that_makes_the_model_fail_is_isolated_and_reported(fake: FakeRay) -> None:
    pool = make_pool(fake)
    for actor in fake.actors:
        actor.mode = "app_error_on:s5"
    result = pool.infer(rows(8))
    assert sorted(p["station_id"] for p in result.predictions) == sorted(f"s{i}" for i in range(8) if i != 5)
    assert [(r["station_id"], reason) for r, reason in result.failed] == [
        ("s5", "inference_error:ValueError:cannot predict s5")
    ]


def test_infer_aborts_when_asked_to_stop(fake: FakeRay) -> None:
    pool = make_pool(fake)
    for actor in fake.actors:
        actor.mode = "hang"
    calls = itertools.count()
    with pytest.raises(InferenceAborted):
        pool.infer(rows(2), should_abort=lambda: next(calls) > 3)


def test_rollout_reaches_every_actor_and_is_timed(fake: FakeRay) -> None:
    pool = make_pool(fake)
    fake.current_version = 2
    pool.rollout(2)
    pool.maintain()
    assert {a.version for a in fake.live_actors()} == {2}
    assert [v for v, _ in pool.rollouts_done] == [2]
    result = pool.infer(rows(2))
    assert {p["model_version"] for p in result.predictions} == {2}


def test_an_actor_restarted_with_an_old_version_is_brought_to_the_target(fake: FakeRay) -> None:
    pool = make_pool(fake)
    pool.rollout(3)
    pool.maintain()
    fake.actors[0].version = 1  # e.g. restarted and loaded an older CURRENT
    pool.maintain()  # stats reveal v1 -> reload issued and completed
    pool.maintain()
    assert {a.version for a in fake.live_actors()} == {3}


def test_periodic_work_runs_while_a_batch_is_stalled(fake: FakeRay) -> None:
    pool = make_pool(fake, call_timeout_s=5.0)
    fake.actors[0].mode = "hang"
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(fake.clock.now)
        if len(ticks) == 3:
            fake.dead_nodes.add(N1)  # the hung actor's node dies meanwhile
            pool.maintain()

    result = pool.infer(rows(4), tick=tick)
    assert len(result.predictions) == 4
    assert len(ticks) >= 3
    assert pool.target_size == 1
    assert [a.node for a in fake.live_actors()] == [N2]


def test_a_slow_call_is_hedged_on_another_actor_long_before_its_timeout(fake: FakeRay) -> None:
    pool = make_pool(fake, call_timeout_s=60.0, hedge_after_s=1.0)
    fake.actors[0].mode = "hang"
    start = fake.clock.now
    result = pool.infer(rows(4))
    assert [p["station_id"] for p in result.predictions] == ["s0", "s1", "s2", "s3"]
    assert {p["actor_id"] for p in result.predictions} == {"a1"}
    assert result.hedges == 1
    assert result.timeouts == 0
    assert fake.clock.now - start < 2.0  # one hedge delay, not the 60 s call timeout
    # The hung copy is abandoned: no actor counts it in flight (rebalancing waits for idle actors).
    assert [m.inflight for m in pool.members] == [0, 0]


def test_the_first_answer_wins_when_the_hedged_call_also_answers(fake: FakeRay) -> None:
    pool = make_pool(fake, call_timeout_s=60.0, hedge_after_s=1.0)
    slow = fake.actors[0]
    slow.mode = "ok"
    original = slow.call

    def late(method: str, *args: Any) -> Ref:
        ref = original(method, *args)
        if method == "predict":
            ref.ready_at = fake.clock.now + 1.5  # answers after the hedge was sent
        return ref

    slow.call = late  # type: ignore[method-assign]
    result = pool.infer(rows(4))
    assert sorted(p["station_id"] for p in result.predictions) == ["s0", "s1", "s2", "s3"]
    assert len(result.predictions) == 4  # no row twice, although two actors answered it
    assert result.hedges == 1


def test_no_hedge_without_the_option(fake: FakeRay) -> None:
    pool = make_pool(fake, call_timeout_s=5.0)
    fake.actors[0].mode = "hang"
    result = pool.infer(rows(4))
    assert result.hedges == 0
    assert result.timeouts == 1


def test_spare_capacity_keeps_a_lost_nodes_actor_until_ray_restarts_it(fake: FakeRay) -> None:
    pool = make_pool(fake, min_actors=2, hedge_after_s=1.0)
    lost = next(a for a in fake.actors if a.node == N1)
    lost.mode = "down"
    fake.dead_nodes.add(N1)
    pool.maintain()
    assert pool.target_size == 2  # the floor, although one worker node is left
    assert len(pool.ready_members()) == 1
    assert pool.node_losses == 1
    assert len(fake.live_actors()) == 2  # not killed: Ray is restarting it
    # Inference goes on with the survivor meanwhile.
    assert len(pool.infer(rows(3)).predictions) == 3
    # Ray brings it up on the surviving node, as a new process.
    lost.node, lost.pid, lost.mode = N2, 777, "ok"
    pool.maintain()  # probe answered: ready again
    assert len(pool.ready_members()) == 2
    assert pool.restarts == 1
    assert pool.startup_ms and len(pool.startup_ms) == 2  # a restart is not a new actor's start-up
    (loss,) = pool.snapshot()["node_loss_log"]
    assert loss["actor"] == 0 and loss["node"] == N1[:12]
    assert loss["back_ms"] is not None and loss["back_ms"] >= loss["lost_ms"]
    # The node comes back: one actor moves over to it, the new one ready before the old one goes.
    fake.dead_nodes.discard(N1)
    for _ in range(3):
        pool.maintain()
        assert len(pool.ready_members()) >= 2
    assert sorted(a.node for a in fake.live_actors()) == [N1, N2]
    assert pool.rebalances == 1
