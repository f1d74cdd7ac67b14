"""Parsing of Kafka's ProducerPerformance output (the ingest reference ceiling)."""

from __future__ import annotations

import pytest

from weatherbench.reference import ReferenceError, parse_producer_performance

OUTPUT = """\
60013 records sent, 12000.2 records/sec (2.75 MB/sec), 930.4 ms avg latency, 1520.0 ms max latency.
140000 records sent, 27994.4 records/sec (6.41 MB/sec), 400.1 ms avg latency, 910.0 ms max latency.
200000 records sent, 21853.4 records/sec (5.00 MB/sec), 562.73 ms avg latency, 1520.00 ms max latency, \
480 ms 50th, 1201 ms 95th, 1440 ms 99th, 1511 ms 99.9th.
"""


def test_the_final_summary_line_is_parsed() -> None:
    result = parse_producer_performance(OUTPUT)
    assert result == {
        "records": 200000.0,
        "rate": 21853.4,
        "mb": 5.0,
        "avg": 562.73,
        "max": 1520.0,
        "p50": 480.0,
        "p95": 1201.0,
        "p99": 1440.0,
        "p999": 1511.0,
    }


def test_output_without_a_summary_is_an_error_that_shows_it() -> None:
    with pytest.raises(ReferenceError, match=r"(?s)no ProducerPerformance summary.*Connection refused"):
        parse_producer_performance("WARN Connection refused\n")
