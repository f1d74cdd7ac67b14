"""Alert rules: valid for Prometheus, every rule exercised by promtool, thresholds as the report's.

The rules (include/prometheus/alerts.yml) and the PDF report (weatherbench.report.targets)
judge the same guide thresholds; this keeps them from drifting apart.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.stack.monitoring import ALERT_RULES
from weatherbench.report.targets import GUIDE_TARGETS

TESTS = Path(__file__).resolve().parent.parent / "prometheus" / "alerts_test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: `make setup` installs Debian's prometheus package"
    return found


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def target(name: str):
    return next(t for t in GUIDE_TARGETS if t.name == name)


def test_rules_load_in_prometheus() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_every_rule_fires_above_its_threshold_and_not_below() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", TESTS.name], capture_output=True, text=True, cwd=TESTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_firing_case() -> None:
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {
        check["alertname"] for case in cases for check in case["alert_rule_test"] if check.get("exp_alerts")
    }
    assert set(rules()) - fired == set()


@pytest.mark.parametrize(
    ("alert", "guide_target", "bound"),
    [
        ("SparkConsumerLagCritical", "Kafka consumer lag, Spark (max)", "critical"),
        ("SparkConsumerLagHigh", "Kafka consumer lag, Spark (max)", "target"),
        ("RayConsumerLagCritical", "Kafka consumer lag, Ray (max)", "critical"),
        ("RayConsumerLagHigh", "Kafka consumer lag, Ray (max)", "target"),
        ("MachineCpuCritical", "CPU utilization (machine, mean)", "critical"),
        ("MachineCpuHigh", "CPU utilization (machine, mean)", "target"),
        ("MachineMemoryCritical", "Memory utilization (machine, max)", "critical"),
        ("MachineMemoryHigh", "Memory utilization (machine, max)", "target"),
    ],
)
def test_thresholds_are_the_reports(alert: str, guide_target: str, bound: str) -> None:
    expr = " ".join(rules()[alert]["expr"].split())
    threshold = float(re.search(r">\s*([\d.]+)\s*$", expr).group(1))
    assert threshold == getattr(target(guide_target), bound)


def test_batch_time_rules_compare_with_the_trigger_interval_as_the_report_does() -> None:
    batch = target("Spark batch time (p95 / trigger)")
    critical = " ".join(rules()["SparkBatchTimeCritical"]["expr"].split())
    warning = " ".join(rules()["SparkBatchTimeOverInterval"]["expr"].split())
    assert (
        f"group_left {batch.critical:g} * max by (instance) (weather_spark_trigger_interval_seconds)"
        in critical
    )
    assert batch.target == 1.0
    assert "group_left max by (instance) (weather_spark_trigger_interval_seconds)" in warning


def test_api_lag_thresholds_are_the_guides() -> None:
    # Section 2.2: API consumer lag target < 100, critical > 1,000 (not in the section 10 table).
    assert rules()["ApiConsumerLagCritical"]["expr"].endswith("> 1000")
    assert rules()["ApiConsumerLagHigh"]["expr"].endswith("> 100")
