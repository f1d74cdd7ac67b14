"""Batch jobs submitted to the Spark cluster: model training for the batch layer."""

from __future__ import annotations

import json
import subprocess

from pipeline.config import REPO_ROOT, StackConfig, service_environ
from pipeline.stack.process import ManagedProcess, tail

TRAIN_MARKER = "TRAIN_RESULT "
# Exit code of train.py when the fitted model does not beat the persistence forecast.
EXIT_NOT_BETTER = 3


class JobError(RuntimeError):
    """A batch job failed; the message carries the reason and the log tail."""


def run_training(config: StackConfig, horizon_minutes: int = 60, timeout_s: float = 600) -> dict:
    """Train a new model version on the Spark cluster; returns the job's TRAIN_RESULT record."""
    from pipeline.spark_submit import spark_env, spark_submit_argv

    config.dump()
    argv = spark_submit_argv(
        config,
        REPO_ROOT / "pipeline" / "batch" / "train.py",
        app_name="weather-train",
        ui_port=config.spark.driver_ui_port + 1,
        extra_args=["--config", str(config.stack_file), "--horizon-minutes", str(horizon_minutes)],
    )
    proc = ManagedProcess(
        "spark-batch",
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
        raise JobError(f"training did not finish within {timeout_s:.0f}s; log {proc.log_file}") from None
    finally:
        proc.pid_file.unlink(missing_ok=True)
    log = proc.log_file.read_text(errors="replace") if proc.log_file.exists() else ""
    results = [line[len(TRAIN_MARKER) :] for line in log.splitlines() if line.startswith(TRAIN_MARKER)]
    if code == EXIT_NOT_BETTER:
        raise JobError(f"the trained model does not beat persistence; not deployed: {results[-1:]}")
    if code != 0 or not results:
        raise JobError(f"training failed (exit {code}); log {proc.log_file}:\n{tail(proc.log_file)}")
    return json.loads(results[-1])


__all__ = ["JobError", "run_training"]
