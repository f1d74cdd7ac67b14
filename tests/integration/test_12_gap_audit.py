"""The per-stage audit on the real pipeline: a window served short is placed at the stage that lost it.

Observations sent after their window closed are acknowledged by Kafka and read
by Spark, which drops them behind its watermark (they are not old enough to be
dead-lettered as far-late). The served window then counts fewer messages than
were acknowledged; the audit, reading the raw, features and predictions topics
back, must place exactly those messages at the Spark stage and nowhere else.
"""

from __future__ import annotations

import time

import pytest

from pipeline.accounting import account, expected_windows, fetch_predictions
from pipeline.config import duration_ms
from pipeline.producer.loadgen import LoadSpec, run_open_loop
from pipeline.producer.observations import SyntheticSource
from pipeline.schema import now_ms
from weatherbench.audit import Gap, audit

from .conftest import close_all_windows
from .test_02_flow import wait_served

pytestmark = pytest.mark.integration

PREFIX = "gapaudit"
LATE_MESSAGES = 3


def test_messages_dropped_behind_the_watermark_are_placed_at_spark(pipeline_stack, producer):
    config = pipeline_stack.config
    window_ms = duration_ms(config.spark.window)
    since_ms = now_ms() - 1000
    result = run_open_loop(
        producer, SyntheticSource(), LoadSpec(stations=2, rate=10, duration_s=8, station_prefix=PREFIX)
    )
    close_all_windows(pipeline_stack, producer, result.last_event_ms)
    before = expected_windows(producer.ledger, window_ms, PREFIX + "-")
    rows = wait_served(config.api.url, PREFIX, set(before))
    assert account(before, rows).complete, "the pipeline must serve the on-time load in full first"

    # Late arrivals for the first window of one station, long after the watermark passed it.
    station, window_start = min(before)
    source = SyntheticSource()
    for i in range(LATE_MESSAGES):
        event_ms = window_start + i
        producer.send(station, event_ms, source.observe(station, event_ms))
    assert producer.flush(30) == 0
    # Spark reads them within a trigger or two; the window is not written again.
    time.sleep(3 * duration_ms(config.spark.trigger) / 1000 + 2)

    expected = expected_windows(producer.ledger, window_ms, PREFIX + "-")
    assert expected[(station, window_start)] == before[(station, window_start)] + LATE_MESSAGES
    rows = fetch_predictions(config.api.url, station_prefix=PREFIX)
    accounting = account(expected, rows)
    assert accounting.lost_messages == LATE_MESSAGES
    acked = {k: ms for k, ms in producer.ledger.event_times.items() if k[0].startswith(PREFIX + "-")}

    gaps = audit(config, config.kafka.raw_topic, PREFIX + "-", since_ms, acked, window_ms, accounting, rows)

    assert gaps == [Gap(station, window_start, "spark", "lost", LATE_MESSAGES)]
