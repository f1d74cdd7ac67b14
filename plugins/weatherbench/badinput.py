"""Bad input under load: did every bad record reach the dead-letter topic, with its reason?

Owns the matching of a step's dead letters against the bad records its load
sent (pure functions, unit tested with crafted inputs). A dead letter of the
streaming job names its source record by (topic, partition, offset); a bad
record's position comes from its delivery report. Matched by that position,
each bad record is:

* dead-lettered with the reason it was generated for (`expected_reason`),
* dead-lettered with another reason (`wrong_reason`), or
* not dead-lettered at all (`missing`).

A dead letter whose source is a record of this step (the step's topic, at or
after the offsets it started from) that was not a bad record is `unexpected`:
the pipeline rejected a good record, which is a bug. Dead letters of other
sources (another topic, the inference stage, load sent before the step) are
counted as `other` and otherwise left alone. The sink is at-least-once, so a
record dead-lettered twice (a re-run micro-batch) counts once and adds to
`duplicates`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.producer.badrecords import BadInputLedger, SentBadRecord
from weatherbench.metrics import Metric

RAW_EXCERPT_CHARS = 120  # of an unexpected dead letter's payload, kept for the report
MAX_EXAMPLES = 5
Position = tuple[str, int, int]  # (topic, partition, offset)


@dataclass(frozen=True)
class DeadLetter:
    source_topic: str
    partition: int
    offset: int
    reason: str
    raw: str | None = None  # the start of the rejected payload

    @property
    def position(self) -> Position:
        return (self.source_topic, self.partition, self.offset)


def parse_dead_letter(value: bytes | None) -> DeadLetter | None:
    """A dead-letter record's source and reason, or None when it names neither.

    Reads the streaming job's form ({reason, raw, source_topic, partition, offset, ...})
    and the inference driver's ({reason, payload, source_topic, source_partition, source_offset}).
    """
    try:
        record = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    topic, reason = record.get("source_topic"), record.get("reason")
    partition = record.get("partition", record.get("source_partition"))
    offset = record.get("offset", record.get("source_offset"))
    raw = record.get("raw", record.get("payload"))
    if not (isinstance(topic, str) and isinstance(reason, str)):
        return None
    if not (isinstance(partition, int) and isinstance(offset, int)):
        return None
    return DeadLetter(
        topic, partition, offset, reason, raw[:RAW_EXCERPT_CHARS] if isinstance(raw, str) else None
    )


def reason_code(reason: str) -> str:
    """The code of a dead-letter reason without its field: "mistyped_field:seq" -> "mistyped_field"."""
    return reason.split(":", 1)[0]


@dataclass
class KindTally:
    """What happened to the bad records of one kind."""

    kind: str
    sent: int = 0
    dead_lettered: int = 0  # with the expected reason
    wrong_reason: int = 0
    missing: int = 0
    reasons: set[str] = field(default_factory=set)  # expected reason codes

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sent": self.sent,
            "dead_lettered": self.dead_lettered,
            "wrong_reason": self.wrong_reason,
            "missing": self.missing,
            "reasons": sorted(self.reasons),
        }


@dataclass
class DeadLetterCheck:
    """A step's bad records matched against its dead letters."""

    kinds: dict[str, KindTally]
    unexpected: list[DeadLetter] = field(default_factory=list)  # one per rejected good record
    wrong: list[tuple[SentBadRecord, list[str]]] = field(default_factory=list)  # (record, reasons given)
    by_reason: Counter[str] = field(default_factory=Counter)  # reason codes of this step's dead letters
    duplicates: int = 0
    other: int = 0
    send_failed: int = 0

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.kinds.values())

    @property
    def expected_reason(self) -> int:
        return sum(t.dead_lettered for t in self.kinds.values())

    @property
    def wrong_reason(self) -> int:
        return sum(t.wrong_reason for t in self.kinds.values())

    @property
    def missing(self) -> int:
        return sum(t.missing for t in self.kinds.values())

    @property
    def received(self) -> int:
        """Bad records found in the dead-letter topic, whatever the reason."""
        return self.expected_reason + self.wrong_reason

    @property
    def passed(self) -> bool:
        """Every bad record dead-lettered with its reason, and no good record rejected."""
        return self.sent > 0 and not (self.missing or self.wrong_reason or self.unexpected)

    def counts(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "received": self.received,
            "expected_reason": self.expected_reason,
            "wrong_reason": self.wrong_reason,
            "missing": self.missing,
            "unexpected": len(self.unexpected),
            "duplicates": self.duplicates,
            "other": self.other,
            "send_failed": self.send_failed,
        }

    def metrics(self) -> list[Metric]:
        result = [
            Metric(f"deadletter.{name}", float(value), "records") for name, value in self.counts().items()
        ]
        for tally in self.kinds.values():
            for name in ("sent", "dead_lettered", "wrong_reason", "missing"):
                result.append(
                    Metric(f"deadletter.kind.{name}", float(getattr(tally, name)), "records", tally.kind)
                )
        for code, count in sorted(self.by_reason.items()):
            result.append(Metric(f"deadletter.reason.{code}", float(count), "records", "spark"))
        return result

    def summary(self) -> dict[str, Any]:
        return {
            **self.counts(),
            "passed": self.passed,
            "kinds": [tally.to_dict() for tally in self.kinds.values()],
            "reasons": dict(sorted(self.by_reason.items())),
            "unexpected_examples": [
                {"position": "|".join(map(str, letter.position)), "reason": letter.reason, "raw": letter.raw}
                for letter in self.unexpected[:MAX_EXAMPLES]
            ],
            "wrong_examples": [
                {"kind": record.kind, "expected": record.reason, "given": given}
                for record, given in self.wrong[:MAX_EXAMPLES]
            ],
        }


def letters_of_step(
    letters: Iterable[DeadLetter], source_topic: str, step_start: Mapping[int, int]
) -> tuple[dict[Position, list[DeadLetter]], int]:
    """Dead letters of records this step sent, by source position; and how many others there were."""
    by_position: dict[Position, list[DeadLetter]] = defaultdict(list)
    other = 0
    for letter in letters:
        if letter.source_topic == source_topic and letter.offset >= step_start.get(letter.partition, 0):
            by_position[letter.position].append(letter)
        else:
            other += 1
    return dict(by_position), other


def check_dead_letters(
    ledger: BadInputLedger,
    letters: Iterable[DeadLetter],
    source_topic: str,
    step_start: Mapping[int, int],
    kinds: Sequence[str] = (),
) -> DeadLetterCheck:
    """Match the bad records `ledger` sent to `source_topic` against the dead letters seen.

    `step_start` is each partition's end offset when the step began; `kinds` are the declared
    kinds, listed even when none of them was sent.
    """
    by_position, other = letters_of_step(letters, source_topic, step_start)
    check = DeadLetterCheck(
        kinds={kind: KindTally(kind) for kind in kinds}, other=other, send_failed=len(ledger.failed)
    )
    for record in ledger.sent:
        tally = check.kinds.setdefault(record.kind, KindTally(record.kind))
        tally.sent += 1
        tally.reasons.add(reason_code(record.reason))
        given = [letter.reason for letter in by_position.get(record.position, [])]
        if not given:
            tally.missing += 1
        elif record.reason in given:
            tally.dead_lettered += 1
        else:
            tally.wrong_reason += 1
            check.wrong.append((record, sorted(set(given))))
    sent_positions = {record.position for record in ledger.sent}
    check.unexpected = [found[0] for position, found in by_position.items() if position not in sent_positions]
    check.duplicates = sum(len(found) - 1 for found in by_position.values())
    check.by_reason = Counter(reason_code(found[0].reason) for found in by_position.values())
    return check
