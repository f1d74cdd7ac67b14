"""Sending a built report by e-mail: the PDF attached, the verdict and regressions in the subject.

SMTP settings come from the environment or an Airflow connection (see
`weatherbench.mail`). When none is configured the report goes to the local
SMTP sink, which is started for the delivery if it is not already running
and stores the message as an .eml file under reports/mail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import REPO_ROOT
from weatherbench.mail import (
    LOCAL_SINK_SOURCE,
    DeliveryReceipt,
    SmtpSettings,
    compose_report_email,
    parse_recipients,
    resolve_smtp_settings,
    send_email,
)
from weatherbench.mailsink import local_sink, sink_status
from weatherbench.report import ReportResult

SINK_OUT_DIR = REPO_ROOT / "reports" / "mail"
SINK_STATE_DIR = REPO_ROOT / ".state" / "mailsink"


@dataclass(frozen=True)
class Delivery:
    receipt: DeliveryReceipt
    settings: SmtpSettings
    sink_dir: Path | None  # where the local sink stored the message, when it was used


def deliver_report(
    result: ReportResult,
    recipients: str | Sequence[str],
    settings: SmtpSettings | None = None,
    sink_out_dir: Path | None = None,
    sink_state_dir: Path | None = None,
) -> Delivery:
    """E-mail the report's PDF; the recipients are checked before anything is sent."""
    addresses = parse_recipients(recipients)
    sink_out_dir = sink_out_dir or SINK_OUT_DIR
    sink_state_dir = sink_state_dir or SINK_STATE_DIR
    settings = settings or resolve_smtp_settings()
    message = compose_report_email(
        subject=result.subject,
        body_text=result.email_body(),
        recipients=addresses,
        sender=settings.sender,
        attachments=[result.pdf],
    )
    if settings.source != LOCAL_SINK_SOURCE:
        return Delivery(send_email(message, settings), settings, None)
    running = sink_status(sink_state_dir)
    out_dir = running.out_dir if running is not None else sink_out_dir  # a started sink keeps its folder
    with local_sink(out_dir, settings.port, sink_state_dir, host=settings.host) as sink:
        return Delivery(send_email(message, settings), settings, sink.out_dir)
