"""Fault tolerance (the guide's section 6.1): each fault under steady load, one mapped task per fault.

The default faults are the guide's four: kill a Spark worker, kill a Ray worker node, restart
the Kafka broker, restart the Spark master. Each step reports lost and duplicated messages,
recovery times and the throughput dip; the bad-input test mixes malformed records into the load.
"""

from airflow.sdk import DAG

from weatherbench_airflow import params
from weatherbench_airflow.workflow import DEFAULT_ARGS, benchmark_suite

TESTS = ("fault-tolerance", "bad-input")

with DAG(
    dag_id="weather_benchmark_fault_tolerance",
    description="The guide's faults under load: loss, duplicates, recovery time",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "manual", "faults"],
    params={
        "profile": params.profile(),
        "tests": params.tests(TESTS, default=["fault-tolerance"]),
        "warmup_s": params.warmup_s(),
        "stations": params.stations(),
        "rate": params.rate(),
        "faults": params.faults(
            [
                "kill spark-worker 1 for 15s",
                "kill ray-worker 1 for 15s",
                "restart kafka",
                "restart spark-master",
            ]
        ),
        "fault_at_s": params.fault_at_s(),
        "fault_duration_s": params.fault_duration_s(),
        "recipients": params.recipients(),
    },
):
    benchmark_suite(TESTS, report_name="fault-tolerance")
