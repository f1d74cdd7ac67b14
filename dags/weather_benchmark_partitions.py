"""Partition scaling (the guide's section 5.3): the benchmark topic at each partition count, Kafka only.

Only Kafka runs, as the guide's test asks; each step grows the topic (ascending counts) and
measures producer throughput, acknowledgement latency and the balance across partitions.
The broker test compares one broker with three (replication factor 3).
"""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("partitions", "brokers")

with DAG(
    dag_id="weather_benchmark_partitions",
    description="Kafka partition counts (and 1 vs 3 brokers), Kafka only",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "kafka"],
    params={
        "profile": params.profile(),
        "tests": params.tests(TESTS, default=["partitions"]),
        "duration_s": params.duration_s(),
        "stations": params.stations(),
        "rate": params.rate(),
        "partitions": params.partitions([2, 4, 8]),
        "brokers": params.brokers([1, 3]),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="partitions", components="kafka")
