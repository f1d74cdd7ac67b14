"""A built report e-mailed over real SMTP: to the default local sink, and to a server named by a connection.

The report is built from real run exports with a seeded regression (see
tests/report_data.py); the message is read back from the .eml file the
sink stored. Every sink a test starts is stopped by its recorded pid.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.test_mail_sink import free_port, port_is_free
from tests.report_data import LATENCY_RUN, clone, load_export, seed_history
from weatherbench import cli
from weatherbench.mailsink import sink_status, start_sink, stop_sink
from weatherbench.report import build_report
from weatherbench.report import delivery as delivery_module
from weatherbench.report.delivery import deliver_report
from weatherbench.store import ResultsStore

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
RECIPIENTS = ["ops@example.org", "lead@example.org"]


@pytest.fixture
def store_with_regression(tmp_path: Path) -> tuple[ResultsStore, str]:
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    exported = load_export(LATENCY_RUN)
    seed_history(store, exported, runs=4, before=NOW)
    slow = clone(exported, "20261127T060000Z-latency-slow", NOW, scale={"latency.e2e.p95": 2.0})
    yield store, store.import_run(slow)
    store.close()


def read_only_eml(folder: Path) -> email.message.EmailMessage:
    stored = sorted(folder.glob("*.eml"))
    assert len(stored) == 1, sorted(p.name for p in folder.iterdir())
    return email.message_from_bytes(stored[0].read_bytes(), policy=email.policy.default)


def check_report_message(message: email.message.EmailMessage, pdf: Path, subject: str) -> None:
    assert [a.addr_spec for a in message["To"].addresses] == RECIPIENTS
    assert message["X-Envelope-To"] == ", ".join(RECIPIENTS)
    assert message["Subject"] == subject
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert "Targets (guide section 10):" in body and "End-to-end latency (p95)" in body
    assert "Regression: End-to-end latency p95" in body
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == pdf.name
    assert attachment.get_content() == pdf.read_bytes()


def test_cli_emails_the_report_to_the_local_sink_and_stops_the_sink_it_started(
    store_with_regression, tmp_path, monkeypatch, capsys
):
    store, run_id = store_with_regression
    port = free_port()
    mail_dir, state_dir = tmp_path / "mail", tmp_path / "sink-state"
    for name in ("WB_SMTP_URL", "AIRFLOW_CONN_SMTP_DEFAULT", "WB_MAIL_FROM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WB_MAIL_SINK_PORT", str(port))
    monkeypatch.setattr(delivery_module, "SINK_OUT_DIR", mail_dir)
    monkeypatch.setattr(delivery_module, "SINK_STATE_DIR", state_dir)
    try:
        code = cli.main(
            [
                "report",
                "--run",
                run_id,
                "--email",
                ",".join(RECIPIENTS),
                "--results-url",
                store.url,
                "--report-dir",
                str(tmp_path / "reports"),
            ]
        )
        assert code == 0
        printed = capsys.readouterr().out
        subject = next(line for line in printed.splitlines() if "subject:" in line).split("subject: ", 1)[1]
        assert "REGRESSION" in subject and "End-to-end latency p95" in subject
        message = read_only_eml(mail_dir)
        check_report_message(message, tmp_path / "reports" / f"{run_id}.pdf", subject)
        assert message["From"] == "weatherbench@localhost"
        # The sink was started for this delivery only.
        assert sink_status(state_dir) is None and port_is_free(port)
    finally:
        stop_sink(state_dir)


def test_report_goes_to_the_server_of_the_airflow_smtp_connection(
    store_with_regression, tmp_path, monkeypatch
):
    store, run_id = store_with_regression
    result = build_report(store, [run_id], tmp_path / "reports")
    # A stand-in for a real relay: a sink process of its own, named only by the connection URI.
    port = free_port()
    relay_state, relay_mail = tmp_path / "relay-state", tmp_path / "relay-mail"
    start_sink(relay_mail, port, relay_state)
    try:
        monkeypatch.delenv("WB_SMTP_URL", raising=False)
        monkeypatch.delenv("WB_MAIL_FROM", raising=False)
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMTP_DEFAULT",
            f"smtp://127.0.0.1:{port}?disable_ssl=true&disable_tls=true&from_email=bench%40example.org",
        )
        monkeypatch.setattr(delivery_module, "SINK_STATE_DIR", tmp_path / "default-sink-state")
        delivered = deliver_report(result, RECIPIENTS)
        assert delivered.sink_dir is None  # not the default sink
        assert delivered.receipt.accepted == RECIPIENTS
        message = read_only_eml(relay_mail)
        check_report_message(message, result.pdf, result.subject)
        assert message["From"] == "bench@example.org"
        assert not (tmp_path / "default-sink-state").exists()
    finally:
        stop_sink(relay_state)
    assert port_is_free(port)
