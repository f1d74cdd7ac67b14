"""The per-stage audit: each gap between acknowledged and served is placed at its stage, with its kind."""

from __future__ import annotations

from weatherbench.audit import Gap, StageFlow, gap_text, gaps_by_stage, locate_gaps

WINDOW = 10_000
W0, W1 = 1_767_225_600_000, 1_767_225_610_000


def acked_window(station: str, start: int, seqs: range) -> dict[tuple[str, int], int]:
    """Acknowledged messages of one window: (station, seq) -> event ms inside the window."""
    return {(station, seq): start + 100 * i for i, seq in enumerate(seqs)}


def healthy_flow(acked: dict[tuple[str, int], int]) -> StageFlow:
    """Every stage holds every acknowledged message once."""
    counts: dict[tuple[str, int], int] = {}
    for (station, _), event_ms in acked.items():
        key = (station, event_ms - event_ms % WINDOW)
        counts[key] = counts.get(key, 0) + 1
    return StageFlow(
        raw=set(acked),
        features={key: [n] for key, n in counts.items()},
        predictions=set(counts),
        served=dict(counts),
    )


ACKED = acked_window("a", W0, range(0, 5)) | acked_window("b", W1, range(0, 4))


def test_a_complete_flow_has_no_gap() -> None:
    assert locate_gaps(ACKED, WINDOW, healthy_flow(ACKED)) == []


def test_a_message_missing_from_the_raw_topic_is_lost_at_kafka() -> None:
    flow = healthy_flow(ACKED)
    flow.raw.discard(("a", 2))
    flow.features[("a", W0)] = [4]
    flow.served[("a", W0)] = 4
    assert locate_gaps(ACKED, WINDOW, flow) == [Gap("a", W0, "kafka", "lost", 1)]


def test_a_short_feature_row_is_lost_at_spark_or_dropped_late_when_spark_dropped_rows() -> None:
    flow = healthy_flow(ACKED)
    flow.features[("b", W1)] = [2]
    flow.served[("b", W1)] = 2
    assert locate_gaps(ACKED, WINDOW, flow) == [Gap("b", W1, "spark", "lost", 2)]
    assert locate_gaps(ACKED, WINDOW, flow, late_dropped_rows=2) == [Gap("b", W1, "spark", "dropped_late", 2)]


def test_an_over_counted_window_is_duplicated_at_spark() -> None:
    flow = healthy_flow(ACKED)
    flow.features[("a", W0)] = [5, 7]  # written again after a replay, counting two messages twice
    flow.served[("a", W0)] = 7
    assert locate_gaps(ACKED, WINDOW, flow) == [Gap("a", W0, "spark", "duplicated", 2)]


def test_a_window_without_a_prediction_is_lost_at_ray_and_one_not_served_at_the_api() -> None:
    flow = healthy_flow(ACKED)
    flow.predictions.discard(("a", W0))
    del flow.served[("a", W0)]
    del flow.served[("b", W1)]
    assert locate_gaps(ACKED, WINDOW, flow) == [
        Gap("a", W0, "ray", "lost", 5),
        Gap("b", W1, "api", "lost", 4),
    ]


def test_a_window_missing_everywhere_is_placed_at_spark_and_a_rewritten_one_is_no_gap() -> None:
    flow = healthy_flow(ACKED)
    del flow.features[("a", W0)]
    flow.predictions.discard(("a", W0))
    del flow.served[("a", W0)]
    flow.features[("b", W1)] = [4, 4]  # the same window written twice with the same count: absorbed
    assert locate_gaps(ACKED, WINDOW, flow) == [Gap("a", W0, "spark", "lost", 5)]


def test_the_summary_counts_messages_per_stage_and_kind_and_reads_as_text() -> None:
    gaps = [
        Gap("a", W0, "spark", "lost", 3),
        Gap("b", W0, "spark", "lost", 1),
        Gap("a", W1, "ray", "lost", 2),
    ]
    summary = gaps_by_stage(gaps)
    assert summary["spark"] == {"lost": 4, "dropped_late": 0, "duplicated": 0}
    assert summary["ray"]["lost"] == 2
    assert summary["kafka"] == {"lost": 0, "dropped_late": 0, "duplicated": 0}
    assert gap_text(summary) == "spark: 4 lost; ray: 2 lost"
    assert gap_text(gaps_by_stage([])) == "none"
    assert gap_text(None) == "none"
