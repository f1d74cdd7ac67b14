"""Finite jobs submitted to the Spark cluster: model training for the batch layer, and others."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.config import REPO_ROOT, StackConfig, service_environ
from pipeline.stack.process import ManagedProcess, tail

TRAIN_MARKER = "TRAIN_RESULT "
# Exit code of train.py when the fitted model does not beat the persistence forecast.
EXIT_NOT_BETTER = 3


class JobError(RuntimeError):
    """A batch job failed; the message carries the reason and the log tail."""


def run_spark_job(
    config: StackConfig,
    script: Path,
    app_name: str,
    marker: str,
    extra_args: list[str],
    timeout_s: float,
    log_name: str = "spark-batch",
    ok_codes: tuple[int, ...] = (0,),
) -> tuple[int, list[dict]]:
    """Submit a finite Spark application to the cluster and wait for it.

    Returns (exit code, the JSON records it printed after `marker`). A timeout stops it and
    raises JobError; so does an exit code outside `ok_codes` with no record, with the log's tail.
    """
    from pipeline.spark_submit import spark_env, spark_submit_argv

    config.dump()
    argv = spark_submit_argv(
        config,
        script,
        app_name=app_name,
        ui_port=config.spark.driver_ui_port + 1,
        extra_args=["--config", str(config.stack_file), *extra_args],
    )
    proc = ManagedProcess(
        log_name,
        argv,
        pid_dir=config.state_dir / "pids",
        log_dir=config.state_dir / "logs",
        env=spark_env(config, base=service_environ()),
        cwd=REPO_ROOT,
    )
    proc.log_file.unlink(missing_ok=True)
    proc.start()
    assert proc.popen is not None
    try:
        code = proc.popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise JobError(f"{app_name} did not finish within {timeout_s:.0f}s; log {proc.log_file}") from None
    finally:
        proc.pid_file.unlink(missing_ok=True)
    log = proc.log_file.read_text(errors="replace") if proc.log_file.exists() else ""
    records = [json.loads(line[len(marker) :]) for line in log.splitlines() if line.startswith(marker)]
    if code not in ok_codes and not records:
        raise JobError(f"{app_name} failed (exit {code}); log {proc.log_file}:\n{tail(proc.log_file)}")
    return code, records


def run_training(config: StackConfig, horizon_minutes: int = 60, timeout_s: float = 600) -> dict:
    """Train a new model version on the Spark cluster; returns the job's TRAIN_RESULT record."""
    code, results = run_spark_job(
        config,
        REPO_ROOT / "pipeline" / "batch" / "train.py",
        app_name="weather-train",
        marker=TRAIN_MARKER,
        extra_args=["--horizon-minutes", str(horizon_minutes)],
        timeout_s=timeout_s,
    )
    if code == EXIT_NOT_BETTER:
        raise JobError(f"the trained model does not beat persistence; not deployed: {results[-1:]}")
    if code != 0 or not results:
        raise JobError(f"training failed (exit {code}): {results[-1:]}")
    return results[-1]


__all__ = ["JobError", "run_spark_job", "run_training"]
