"""Dead letters matched against the bad records a step sent: crafted letters, every outcome counted."""

from __future__ import annotations

import json

from pipeline.producer.badrecords import BAD_KINDS, BadInputLedger, SentBadRecord
from weatherbench.badinput import DeadLetter, check_dead_letters, parse_dead_letter
from weatherbench.collectors.deadletter import DeadLetterCollector

TOPIC = "weather-raw-benchmark"
STEP_START = {0: 100, 1: 200}  # end offsets of the step's topic when it began


def sent(kind: str, reason: str, partition: int, offset: int) -> SentBadRecord:
    return SentBadRecord(kind, reason, TOPIC, partition, offset)


def spark_letter(partition: int, offset: int, reason: str, topic: str = TOPIC) -> bytes:
    """A dead-letter value as the streaming job writes it."""
    return json.dumps(
        {
            "reason": reason,
            "raw": "x" * 500,
            "raw_bytes": 500,
            "source_topic": topic,
            "partition": partition,
            "offset": offset,
            "kafka_time": 1,
            "detected_time": 2,
        }
    ).encode()


LEDGER = BadInputLedger(
    sent=[
        sent("malformed", "malformed_json", 0, 101),
        sent("malformed", "malformed_json", 1, 205),
        sent("mistyped", "mistyped_field:seq", 0, 103),
        sent("late", "late:event_time", 1, 207),
        sent("oversize", "oversize", 0, 110),
    ],
    failed=[("truncated", "Broker: Message size too large")],
    attempted=6,
)
LETTERS = [
    DeadLetter(TOPIC, 0, 101, "malformed_json"),
    DeadLetter(TOPIC, 0, 101, "malformed_json"),  # a re-run micro-batch wrote it again
    DeadLetter(TOPIC, 1, 205, "malformed_json"),
    DeadLetter(TOPIC, 0, 103, "mistyped_field:temperature_c"),  # the wrong field named
    # late 1|207 never arrives
    DeadLetter(TOPIC, 0, 110, "oversize"),
    DeadLetter(TOPIC, 1, 206, "out_of_range:humidity_pct", '{"station_id":"b-0001"'),  # a good record!
    DeadLetter(TOPIC, 0, 99, "malformed_json"),  # sent before the step
    DeadLetter("weather-raw", 0, 500, "late:event_time"),  # production traffic
    DeadLetter("weather-features", 1, 7, "invalid feature row"),  # the inference stage's
]


def test_every_bad_record_is_accounted_as_dead_lettered_wrong_or_missing() -> None:
    check = check_dead_letters(LEDGER, LETTERS, TOPIC, STEP_START, BAD_KINDS)
    kinds = {tally.kind: tally.to_dict() for tally in check.kinds.values()}
    assert list(kinds) == list(BAD_KINDS)  # declared kinds are listed even when none was sent
    assert kinds["malformed"] == {
        "kind": "malformed",
        "sent": 2,
        "dead_lettered": 2,
        "wrong_reason": 0,
        "missing": 0,
        "reasons": ["malformed_json"],
    }
    assert (kinds["mistyped"]["sent"], kinds["mistyped"]["wrong_reason"]) == (1, 1)
    assert (kinds["late"]["sent"], kinds["late"]["missing"]) == (1, 1)
    assert kinds["truncated"]["sent"] == 0
    assert check.counts() == {
        "sent": 5,
        "received": 4,
        "expected_reason": 3,
        "wrong_reason": 1,
        "missing": 1,
        "unexpected": 1,
        "duplicates": 1,
        "other": 3,
        "send_failed": 1,
    }
    assert not check.passed
    assert [letter.position for letter in check.unexpected] == [(TOPIC, 1, 206)]
    assert dict(check.by_reason) == {
        "malformed_json": 2,
        "mistyped_field": 1,
        "oversize": 1,
        "out_of_range": 1,
    }


def test_metrics_and_summary_name_each_count() -> None:
    check = check_dead_letters(LEDGER, LETTERS, TOPIC, STEP_START, BAD_KINDS)
    metrics = {(m.name, m.component): m.value for m in check.metrics()}
    assert metrics[("deadletter.sent", "")] == 5
    assert metrics[("deadletter.missing", "")] == 1
    assert metrics[("deadletter.unexpected", "")] == 1
    assert metrics[("deadletter.kind.wrong_reason", "mistyped")] == 1
    assert metrics[("deadletter.kind.sent", "truncated")] == 0
    assert metrics[("deadletter.reason.out_of_range", "spark")] == 1
    summary = check.summary()
    assert summary["passed"] is False
    assert summary["unexpected_examples"] == [
        {
            "position": f"{TOPIC}|1|206",
            "reason": "out_of_range:humidity_pct",
            "raw": '{"station_id":"b-0001"',
        }
    ]
    assert summary["wrong_examples"] == [
        {"kind": "mistyped", "expected": "mistyped_field:seq", "given": ["mistyped_field:temperature_c"]}
    ]
    json.dumps(summary)  # stored with the run


def test_a_clean_step_passes() -> None:
    ledger = BadInputLedger(sent=[sent("late", "late:event_time", 0, 100)], attempted=1)
    letters = [DeadLetter(TOPIC, 0, 100, "late:event_time")]
    check = check_dead_letters(ledger, letters, TOPIC, STEP_START, ("late",))
    assert check.passed and check.received == check.sent == 1
    # Nothing sent proves nothing.
    assert not check_dead_letters(BadInputLedger(), letters, TOPIC, STEP_START).passed


def test_dead_letters_of_both_stages_are_read_and_junk_is_not() -> None:
    spark = parse_dead_letter(spark_letter(3, 42, "oversize"))
    assert spark is not None and spark.position == (TOPIC, 3, 42) and spark.reason == "oversize"
    assert spark.raw is not None and len(spark.raw) == 120
    inference = {
        "stage": "inference",
        "reason": "invalid feature row",
        "source_topic": "weather-features",
        "source_partition": 1,
        "source_offset": 9,
        "payload": None,
    }
    parsed = parse_dead_letter(json.dumps(inference).encode())
    assert parsed is not None and parsed.position == ("weather-features", 1, 9) and parsed.raw is None
    for junk in (None, b"", b"not json", b"[1]", json.dumps({"reason": "x", "source_topic": "t"}).encode()):
        assert parse_dead_letter(junk) is None


class FakeMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    """Hands out prepared batches; an empty batch when they run out (nothing more arrived)."""

    def __init__(self, batches: list[list[bytes]]) -> None:
        self.batches = batches
        self.closed = False

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return [FakeMessage(v) for v in self.batches.pop(0)] if self.batches else []

    def close(self) -> None:
        self.closed = True


def test_collector_keeps_what_it_reads_and_waits_for_expected_positions() -> None:
    collector = DeadLetterCollector("127.0.0.1:1", "weather-deadletter", TOPIC, interval_s=0.01)
    consumer = FakeConsumer(
        [[spark_letter(0, 101, "malformed_json"), b"garbage"], [spark_letter(1, 205, "oversize")]]
    )
    collector._consumer = consumer  # type: ignore[assignment]  # as start() would have assigned it
    collector.sample(0)
    assert [letter.position for letter in collector.letters] == [(TOPIC, 0, 101)]
    assert collector.unreadable == 1
    assert not collector.wait_for({(TOPIC, 0, 101), (TOPIC, 1, 205)}, timeout_s=0.05)
    collector.stop()  # reads what arrived since the last sample, then closes the consumer
    assert consumer.closed
    assert collector.wait_for({(TOPIC, 0, 101), (TOPIC, 1, 205)}, timeout_s=0)
    read = {m.name: m.value for m in collector.metrics()}
    assert read == {"deadletter.read": 2, "deadletter.unreadable": 1, "deadletter.failed_samples": 0}
