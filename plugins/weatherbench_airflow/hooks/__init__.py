"""Hooks: one thin, typed client per system the DAGs talk to (the stack runtime, Ray).

Kafka topics go through the Kafka provider's `KafkaAdminClientHook`, Spark jobs through the
Spark provider's `SparkSubmitHook`, mail through the smtp provider; no Airflow 3 Ray provider
exists, hence `RayHook`.
"""
