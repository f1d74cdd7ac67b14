"""weatherbench: the Airflow-free benchmark engine for the weather pipeline.

It owns workloads (declarative files under include/workloads), load
generation on the benchmark topic, the collectors that measure every metric
of the benchmark guide, the experiments that sequence them, the statistics,
the run manifest and the results store, and the `benchmark_system` CLI.
It imports `pipeline` (the system under test) and never Airflow: the Airflow
hooks and operators adapt it, so dependencies point one way:
dags -> plugins (operators) -> weatherbench -> pipeline.
"""
