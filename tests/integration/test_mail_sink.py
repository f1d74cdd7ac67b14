"""Report e-mail delivered over real SMTP to the local sink, and the sink's process management.

Each test runs its own sink subprocess on a free loopback port with a
temporary state and mail directory. A finalizer stops every sink a test
started (by its recorded process group), even when the test fails.
"""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import psutil
import pytest

from weatherbench.mail import (
    MailError,
    SmtpSettings,
    compose_report_email,
    resolve_smtp_settings,
    send_email,
)
from weatherbench.mailsink import LOG_FILE, RECORD_FILE, local_sink, sink_status, start_sink, stop_sink

pytestmark = pytest.mark.integration

PDF_BYTES = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n\x00\x9c\xff\xfe binary\r\n.\r\n..\n%%EOF\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pid_is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class SinkPlace:
    port: int
    out_dir: Path
    state_dir: Path


@pytest.fixture()
def place(tmp_path: Path) -> Iterator[SinkPlace]:
    where = SinkPlace(port=free_port(), out_dir=tmp_path / "mail", state_dir=tmp_path / "state")
    yield where
    stop_sink(where.state_dir)


def sink_settings(port: int) -> SmtpSettings:
    return resolve_smtp_settings({"WB_MAIL_SINK_PORT": str(port), "WB_MAIL_FROM": "bench@localhost"})


def report_message(tmp_path: Path, sender: str) -> EmailMessage:
    pdf = tmp_path / "latency-report.pdf"
    pdf.write_bytes(PDF_BYTES)
    return compose_report_email(
        subject="Weather benchmark report: latency",
        body_text="End to end p95: 20.3 s.\n.\nA line with only a dot above.\n",
        recipients="ops@example.org, lead@localhost",
        sender=sender,
        attachments=[pdf],
    )


def test_report_is_delivered_and_stored_as_eml(place: SinkPlace, tmp_path: Path) -> None:
    info = start_sink(place.out_dir, place.port, place.state_dir)
    assert (info.host, info.port, info.out_dir) == ("127.0.0.1", place.port, place.out_dir.resolve())
    settings = sink_settings(place.port)
    message = report_message(tmp_path, settings.sender)

    receipt = send_email(message, settings)

    assert receipt.recipients == ["ops@example.org", "lead@localhost"]
    assert receipt.refused == {}
    assert (receipt.host, receipt.port) == ("127.0.0.1", place.port)
    stored = sorted(place.out_dir.glob("*.eml"))
    assert len(stored) == 1, sorted(place.out_dir.iterdir())
    assert [p.name for p in place.out_dir.iterdir()] == [stored[0].name]  # no temporary file left behind
    received = email.message_from_bytes(stored[0].read_bytes(), policy=email.policy.default)
    assert received["X-Envelope-From"] == "<bench@localhost>"
    assert received["X-Envelope-To"] == "ops@example.org, lead@localhost"
    assert [a.addr_spec for a in received["To"].addresses] == ["ops@example.org", "lead@localhost"]
    assert received["From"] == "bench@localhost"
    assert received["Subject"] == "Weather benchmark report: latency"
    assert received["Message-ID"] == receipt.message_id
    body = received.get_body(preferencelist=("plain",))
    assert body is not None
    # The file holds the message as it crossed the wire, so its lines end in CRLF.
    assert body.get_content() == "End to end p95: 20.3 s.\r\n.\r\nA line with only a dot above.\r\n"
    [attachment] = list(received.iter_attachments())
    assert attachment.get_filename() == "latency-report.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_payload(decode=True) == PDF_BYTES


def test_start_twice_is_one_sink_and_stop_frees_port_and_pid(place: SinkPlace) -> None:
    first = start_sink(place.out_dir, place.port, place.state_dir)
    second = start_sink(place.out_dir, place.port, place.state_dir)
    assert second == first
    assert sink_status(place.state_dir) == first
    log = (place.state_dir / LOG_FILE).read_text()
    assert f"mail sink listening on 127.0.0.1:{place.port}, writing {place.out_dir.resolve()}" in log

    assert stop_sink(place.state_dir) is True

    assert "mail sink stopped" in (place.state_dir / LOG_FILE).read_text()  # SIGTERM was enough
    assert port_is_free(place.port)
    assert pid_is_gone(first.pid)
    assert not (place.state_dir / RECORD_FILE).exists()
    assert sink_status(place.state_dir) is None
    assert stop_sink(place.state_dir) is False  # nothing left to stop


def test_start_refuses_a_port_taken_by_another_process(place: SinkPlace) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", place.port))
        squatter.listen()
        with pytest.raises(MailError, match=f"port 127.0.0.1:{place.port} is taken by"):
            start_sink(place.out_dir, place.port, place.state_dir)
    assert sink_status(place.state_dir) is None


def test_start_refuses_to_replace_a_sink_with_other_settings(place: SinkPlace, tmp_path: Path) -> None:
    running = start_sink(place.out_dir, place.port, place.state_dir)
    with pytest.raises(MailError, match=f"a mail sink is already running \\(pid {running.pid} "):
        start_sink(tmp_path / "elsewhere", place.port, place.state_dir)
    assert sink_status(place.state_dir) == running


def test_a_sink_that_exits_at_start_fails_with_its_log(place: SinkPlace, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("in the way of the mail directory")
    with pytest.raises(MailError, match=r"(?s)exited with status 1 before listening.*cannot listen on"):
        start_sink(not_a_dir, place.port, place.state_dir)
    assert sink_status(place.state_dir) is None


def test_sending_where_nothing_listens_names_host_and_port(place: SinkPlace, tmp_path: Path) -> None:
    settings = sink_settings(place.port)
    message = report_message(tmp_path, settings.sender)
    with pytest.raises(MailError) as caught:
        send_email(message, settings)
    text = str(caught.value)
    assert f"cannot reach SMTP server 127.0.0.1:{place.port}: connection refused" in text
    assert "benchmark_system mail-sink start" in text


def test_local_sink_stops_what_it_started_even_when_the_block_raises(
    place: SinkPlace, tmp_path: Path
) -> None:
    settings = sink_settings(place.port)
    with (
        pytest.raises(RuntimeError, match="report failed"),
        local_sink(place.out_dir, place.port, place.state_dir) as info,
    ):
        send_email(report_message(tmp_path, settings.sender), settings)
        raise RuntimeError("report failed")
    assert len(list(place.out_dir.glob("*.eml"))) == 1
    assert pid_is_gone(info.pid)
    assert port_is_free(place.port)
    assert sink_status(place.state_dir) is None


def test_local_sink_leaves_a_running_sink_running(place: SinkPlace) -> None:
    running = start_sink(place.out_dir, place.port, place.state_dir)
    with local_sink(place.out_dir, place.port, place.state_dir) as info:
        assert info == running
    assert sink_status(place.state_dir) == running
    assert stop_sink(place.state_dir) is True
