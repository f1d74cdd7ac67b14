"""Resources (the guide's section 7): CPU, memory, disk and network per component under steady load."""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("resources",)

with DAG(
    dag_id="weather_benchmark_resources",
    description="Resource use per component under steady load",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "resources"],
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
    benchmark_suite(TESTS, report_name="resources")
