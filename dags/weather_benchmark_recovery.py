"""Recovery (the guide's section 6.3): every component killed under load, and how long until it serves again.

Infrastructure is started again 5 s after its kill; the streaming job, the inference driver
and the API are restarted by their supervisor. Empty fault list: the profile's (all components).
"""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("recovery",)

with DAG(
    dag_id="weather_benchmark_recovery",
    description="Recovery time of every component after a kill under load",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "faults"],
    params={
        "profile": params.profile(),
        "tests": params.tests(TESTS),
        "warmup_s": params.warmup_s(),
        "faults": params.faults([]),
        "fault_at_s": params.fault_at_s(),
        "fault_duration_s": params.fault_duration_s(),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="recovery")
