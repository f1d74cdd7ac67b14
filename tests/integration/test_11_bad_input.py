"""Bad input under load, for real: every kind of bad record reaches the dead-letter topic with its reason.

Runs the bad-input experiment as one step against the session's pipeline:
malformed, truncated, mistyped, out-of-range, oversize and far-late records make
up a tenth of the stream. Every bad record Kafka acknowledged must be in the
dead-letter topic with the reason it was made for, no good record may be
dead-lettered, and every acknowledged good record must be served.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.kafka_topics import read_topic
from pipeline.producer.badrecords import BAD_KINDS
from pipeline.producer.loadgen import bad_station_id
from pipeline.stack.local import LocalStack
from tests.integration.test_08_benchmark import run

pytestmark = pytest.mark.integration


def test_every_bad_record_is_dead_lettered_with_its_reason_and_no_good_one_is_lost(
    pipeline_stack: LocalStack, tmp_path: Path
) -> None:
    # 8 partitions: an earlier test in the session may have grown the benchmark topic to 8, and
    # Kafka cannot shrink it under the running streaming job (growing from 4 is fine).
    overrides = {
        "stations": 5,
        "rate": 10,
        "duration_s": 30,
        "warmup_s": 10,
        "partitions": 8,
        "bad_input": {"fraction": 0.1, "kinds": list(BAD_KINDS)},
    }
    result, store = run(pipeline_stack, tmp_path, "bad-input", overrides)
    (outcome,) = result.outcomes
    check = outcome.bad_input
    assert result.status == "passed", result.summary
    assert result.summary["bad_input"] == [check]

    # The good records: all acknowledged, all served, none lost.
    accounting = outcome.accounting
    assert accounting["expected_messages"] == outcome.value("producer.acked") == 400
    assert accounting["lost_messages"] == 0, accounting
    assert accounting["missing_windows"] == 0 and accounting["short_windows"] == 0
    assert accounting["unexpected_windows"] == 0  # no bad record was aggregated into a window

    # The bad records: a tenth of the stream, every kind, each dead-lettered with its reason.
    assert check["send_failed"] == 0
    assert check["sent"] == 44  # 400 good make 90% of the stream
    kinds = {kind["kind"]: kind for kind in check["kinds"]}
    assert list(kinds) == list(BAD_KINDS)
    for name, kind in kinds.items():
        assert kind["sent"] >= 7, name
        assert (kind["dead_lettered"], kind["wrong_reason"], kind["missing"]) == (kind["sent"], 0, 0), kind
    assert kinds["late"]["reasons"] == ["late"]
    assert check["unexpected"] == 0, check["unexpected_examples"]
    assert check["passed"] is True

    stored = {(m.metric, m.component): m.value for m in store.metrics(result.run_id)}
    assert stored[("deadletter.sent", "")] == stored[("deadletter.expected_reason", "")] == 44
    assert stored[("deadletter.missing", "")] == stored[("deadletter.unexpected", "")] == 0
    assert stored[("deadletter.kind.dead_lettered", "late")] == kinds["late"]["sent"]
    assert stored[("deadletter.reason.late", "spark")] == kinds["late"]["sent"]

    # Read back from the topic itself: the kinds that keep the station id intact, by reason.
    config = pipeline_stack.config
    marker = f'"station_id":"{bad_station_id(outcome.station_prefix)}"'
    reasons: dict[bytes | None, str] = {}
    for _partition, _time, key, value in read_topic(
        config.kafka.bootstrap_servers, config.kafka.deadletter_topic
    ):
        letter = json.loads(value or b"{}")
        if marker in (letter.get("raw") or ""):
            reasons[key] = letter["reason"].split(":")[0]  # keyed by source: a re-written one counts once
    found = Counter(reasons.values())
    assert found["late"] == kinds["late"]["sent"]
    assert found["oversize"] == kinds["oversize"]["sent"]
    assert found["out_of_range"] == kinds["out_of_range"]["sent"]
