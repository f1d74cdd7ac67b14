"""Scalability (the guide's sections 5.1, 5.2): Spark workers, Ray workers and load, a mapped task per step.

Each worker count runs the same load; the report sets the measured capacity against ideal
linear scaling and names the tier that saturated first.
"""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("scalability-spark", "scalability-ray", "scalability-load")

with DAG(
    dag_id="weather_benchmark_scalability",
    description="Spark workers, Ray workers and load steps against ideal linear scaling",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "scalability"],
    params={
        "profile": params.profile(),
        "tests": params.tests(TESTS),
        "duration_s": params.duration_s(),
        "warmup_s": params.warmup_s(),
        "stations": params.stations(),
        "rate": params.rate(),
        "spark_workers": params.workers("Spark", [1, 2, 4]),
        "ray_workers": params.workers("Ray", [1, 2, 4]),
        "load_steps": params.load_steps([1, 10, 50, 100]),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="scalability")
