"""Airflow adapters of the benchmark suite: hooks, operators and the DAG building blocks.

Everything here is thin over the Airflow-free engine (`weatherbench`) and the stack
runtime (`pipeline.stack`): a hook wraps one client (the stack, Ray, the Kafka admin
client of the Kafka provider, spark-submit of the Spark provider); an operator runs one
engine call and hands its result on by XCom. `environment` (no Airflow import) says how
Airflow runs for this repository: its home, DAGs and plugins folders, port, connections.
"""
