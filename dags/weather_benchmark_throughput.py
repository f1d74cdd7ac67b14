"""Throughput (the guide's section 1.2): offered vs achieved over load steps, and the sustainable rate.

The load steps run N stations at one message per second each; the sustainable-rate search finds
the highest offered rate whose lag does not trend upward and whose latency SLOs hold.
"""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("throughput", "sustainable")

with DAG(
    dag_id="weather_benchmark_throughput",
    description="Offered vs achieved throughput over load steps; the sustainable rate",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "throughput"],
    params={
        "profile": params.profile(),
        "tests": params.tests(TESTS),
        "duration_s": params.duration_s(),
        "warmup_s": params.warmup_s(),
        "load_steps": params.load_steps([1, 10, 50]),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="throughput")
