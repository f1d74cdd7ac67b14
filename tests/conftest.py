"""Shared test settings: Airflow-free, and integration tests use their own ports and state dirs."""

import os

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
