"""Nightly benchmark: the guide's suite on one stack, then the PDF report by e-mail.

setup -> latency -> throughput -> scalability (Spark workers, Ray workers) -> fault tolerance
-> resources -> report -> e-mail; the stack is torn down even when a step fails. The defaults
are the quick profile sized to finish within 15 minutes on a 2-core machine; for the guide's
full sizes pick the `full` profile and longer step lists in the trigger form.
"""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("latency", "throughput", "scalability-spark", "scalability-ray", "fault-tolerance", "resources")

with DAG(
    dag_id="weather_benchmark_nightly",
    description="The benchmark suite every night, with its PDF report e-mailed",
    doc_md=__doc__,
    # No start date: a newly unpaused nightly waits for the next 02:00 instead of running at once.
    schedule="0 2 * * *",
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "nightly"],
    params={
        "profile": params.profile("quick"),
        "tests": params.tests(TESTS),
        "duration_s": params.duration_s(20),
        "warmup_s": params.warmup_s(10),
        "stations": params.stations(),
        "rate": params.rate(),
        "load_steps": params.load_steps([10, 50]),
        "spark_workers": params.workers("Spark", [1, 2]),
        "ray_workers": params.workers("Ray", [1, 2]),
        "faults": params.faults(
            ["kill spark-worker 1 for 15s", "kill ray-worker 1 for 15s", "restart kafka"]
        ),
        "fault_at_s": params.fault_at_s(25),
        "fault_duration_s": params.fault_duration_s(40),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="nightly")
