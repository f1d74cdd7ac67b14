"""Latency (the guide's section 1.1): stage latencies T1..T6, window close and end to end at a steady load."""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("latency",)

with DAG(
    dag_id="weather_benchmark_latency",
    description="Stage and end-to-end latency at a steady load",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "latency"],
    params={
        "profile": params.profile(),
        "tests": params.tests(TESTS),
        "duration_s": params.duration_s(),
        "warmup_s": params.warmup_s(),
        "stations": params.stations(),
        "rate": params.rate(),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="latency")
