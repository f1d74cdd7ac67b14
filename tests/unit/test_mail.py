"""Report e-mail: SMTP settings as Airflow's SMTP connection reads them, recipients, composed messages."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from weatherbench.mail import (
    DEFAULT_SENDER,
    LOCAL_SINK_SOURCE,
    MailError,
    SmtpSettings,
    compose_report_email,
    parse_recipients,
    resolve_smtp_settings,
    smtp_settings_from_connection,
    smtp_settings_from_url,
)

PDF_BYTES = b"%PDF-1.4\n% weather report\n\x00\x01\xfe\xff binary tail\r\n%%EOF\n"


# -- settings --------------------------------------------------------------


def test_uri_with_percent_encoded_password_and_from_email() -> None:
    settings = smtp_settings_from_url(
        "smtp://bench%40example.org:p%40ss%3Aw%2Frd%25@mail.example.org:587"
        "?from_email=reports%40example.org&disable_ssl=true&disable_tls=false&timeout=12"
    )
    assert (settings.host, settings.port) == ("mail.example.org", 587)
    assert settings.username == "bench@example.org"
    assert settings.password == "p@ss:w/rd%"
    assert settings.sender == "reports@example.org"
    assert settings.security == "starttls"
    assert settings.timeout_s == 12
    assert settings.source == "WB_SMTP_URL"


def test_uri_with_extras_as_one_json_parameter() -> None:
    settings = smtp_settings_from_url(
        'smtp://mail.example.org:2525?__extra__={"disable_ssl": true, "disable_tls": true}'
    )
    assert (settings.port, settings.security, settings.username) == (2525, "none", None)


def test_json_connection_form() -> None:
    conn = {
        "conn_type": "smtp",
        "host": "smtp.example.org",
        "port": 465,
        "login": "bench",
        "password": "s3cret",
        "extra": {"from_email": "bench@example.org", "timeout": 5},
    }
    settings = smtp_settings_from_url(json.dumps(conn), source="AIRFLOW_CONN_SMTP_DEFAULT")
    assert (settings.host, settings.port, settings.username, settings.password) == (
        "smtp.example.org",
        465,
        "bench",
        "s3cret",
    )
    assert settings.security == "ssl"
    assert (settings.sender, settings.timeout_s, settings.source) == (
        "bench@example.org",
        5,
        "AIRFLOW_CONN_SMTP_DEFAULT",
    )


def test_json_connection_with_extra_as_text_and_port_as_text() -> None:
    conn = {"conn_type": "smtp", "host": "h.example.org", "port": "25", "extra": '{"disable_ssl": "true"}'}
    settings = smtp_settings_from_url(json.dumps(conn))
    assert (settings.port, settings.security) == (25, "starttls")


def test_airflow_defaults_ssl_on_unless_disabled_then_starttls_unless_disabled() -> None:
    # The provider's SmtpHook: use_ssl = not disable_ssl, smtp_starttls = not disable_tls, both default False.
    def security(**extra: object) -> str:
        return smtp_settings_from_connection("h.example.org", 25, None, None, extra).security

    assert security() == "ssl"
    assert security(disable_tls=True) == "ssl"
    assert security(disable_ssl=True) == "starttls"
    assert security(disable_ssl=True, disable_tls=True) == "none"
    assert security(disable_ssl="false") == "ssl"  # a word, not Python truthiness of a non-empty string


def test_connection_defaults_without_port_timeout_or_sender() -> None:
    ssl_settings = smtp_settings_from_connection("h.example.org", None, None, None, None)
    assert (ssl_settings.port, ssl_settings.timeout_s, ssl_settings.sender) == (465, 30, DEFAULT_SENDER)
    plain = smtp_settings_from_connection("h.example.org", None, "", "ignored", {"disable_ssl": True})
    assert plain.port == 25
    assert (plain.username, plain.password) == (None, None)  # no login, so no password either


def test_precedence_url_then_airflow_connection_then_local_sink() -> None:
    url = "smtp://url.example.org:2525?disable_ssl=true&disable_tls=true"
    airflow = "smtp://airflow.example.org:587?disable_ssl=true"

    both = resolve_smtp_settings({"WB_SMTP_URL": url, "AIRFLOW_CONN_SMTP_DEFAULT": airflow})
    assert (both.host, both.source) == ("url.example.org", "WB_SMTP_URL")

    airflow_only = resolve_smtp_settings({"WB_SMTP_URL": "", "AIRFLOW_CONN_SMTP_DEFAULT": airflow})
    assert (airflow_only.host, airflow_only.security) == ("airflow.example.org", "starttls")
    assert airflow_only.source == "AIRFLOW_CONN_SMTP_DEFAULT"

    default = resolve_smtp_settings({})
    assert (default.host, default.port, default.security) == ("127.0.0.1", 8025, "none")
    assert (default.username, default.sender, default.source) == (None, DEFAULT_SENDER, LOCAL_SINK_SOURCE)

    assert resolve_smtp_settings({"WB_MAIL_SINK_PORT": "18025"}).port == 18025


def test_wb_mail_from_overrides_every_sender() -> None:
    url = "smtp://h.example.org:25?from_email=conn%40example.org&disable_ssl=true"
    assert resolve_smtp_settings({"WB_SMTP_URL": url}).sender == "conn@example.org"
    env = {"WB_SMTP_URL": url, "WB_MAIL_FROM": "bench@example.org"}
    assert resolve_smtp_settings(env).sender == "bench@example.org"
    assert resolve_smtp_settings({"WB_MAIL_FROM": "bench@example.org"}).sender == "bench@example.org"
    with pytest.raises(MailError, match="WB_MAIL_FROM: 'not an address'"):
        resolve_smtp_settings({"WB_MAIL_FROM": "not an address"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WB_SMTP_URL": "smtp://h.example.org:notaport"}, r"WB_SMTP_URL: bad connection URI .*smtp://"),
        ({"WB_SMTP_URL": "smtp://h.example.org:70000"}, r"WB_SMTP_URL: bad connection URI"),
        ({"WB_SMTP_URL": "http://h.example.org:25"}, r"WB_SMTP_URL: scheme 'http' is not 'smtp'"),
        ({"WB_SMTP_URL": "h.example.org:25"}, r"WB_SMTP_URL: scheme"),
        ({"WB_SMTP_URL": "smtp://:25"}, r"WB_SMTP_URL: the connection has no host"),
        ({"AIRFLOW_CONN_SMTP_DEFAULT": '{"conn_type": "smtp", "host": "h", "port": "x"}'}, r"port 'x'"),
        ({"AIRFLOW_CONN_SMTP_DEFAULT": '{"conn_type": "postgres", "host": "h"}'}, r"'postgres' is not"),
        ({"AIRFLOW_CONN_SMTP_DEFAULT": "{not json"}, r"AIRFLOW_CONN_SMTP_DEFAULT: not a valid JSON"),
        ({"WB_SMTP_URL": "smtp://h.example.org:25?disable_ssl=maybe"}, r"extra disable_ssl='maybe'"),
        ({"WB_SMTP_URL": "smtp://h.example.org:25?timeout=soon"}, r"extra timeout='soon'"),
        ({"WB_MAIL_SINK_PORT": "eight"}, r"WB_MAIL_SINK_PORT: port 'eight' is not a number"),
    ],
)
def test_bad_settings_name_the_variable_and_field(env: dict[str, str], expected: str) -> None:
    with pytest.raises(MailError, match=expected):
        resolve_smtp_settings(env)


def test_password_is_not_in_repr() -> None:
    settings = smtp_settings_from_url("smtp://bench:hunter2-secret@h.example.org:587?disable_ssl=true")
    assert settings.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in settings.describe()
    assert "bench" in settings.describe()


def test_settings_reject_unknown_security() -> None:
    with pytest.raises(MailError, match="security 'tls' is not one of none, starttls, ssl"):
        SmtpSettings(host="h", port=25, security="tls")  # type: ignore[arg-type]


# -- recipients ------------------------------------------------------------


def test_recipients_split_on_commas_semicolons_and_spaces() -> None:
    assert parse_recipients("a@x.org, b@y.org;c@localhost  d.e+f@z.example.org") == [
        "a@x.org",
        "b@y.org",
        "c@localhost",
        "d.e+f@z.example.org",
    ]
    assert parse_recipients(["a@x.org", "b@y.org,A@X.org"]) == ["a@x.org", "b@y.org"]


@pytest.mark.parametrize("bad", ["nobody", "a@", "@x.org", "a@x..org", "a@-x.org", "<a@x.org>", "a@x.org>"])
def test_bad_recipient_is_named(bad: str) -> None:
    with pytest.raises(MailError, match=f"recipient: '{bad}' is not an e-mail address"):
        parse_recipients(f"good@x.org, {bad}")


@pytest.mark.parametrize("empty", ["", " ,; ", []])
def test_no_recipients_is_an_error(empty: str | list[str]) -> None:
    with pytest.raises(MailError, match="no recipients given"):
        parse_recipients(empty)


# -- composing -------------------------------------------------------------


@pytest.fixture()
def report_files(tmp_path: Path) -> tuple[Path, Path]:
    pdf = tmp_path / "benchmark-report 2026.pdf"
    pdf.write_bytes(PDF_BYTES)
    html = tmp_path / "report.html"
    html.write_text("<html><body><h1>Température</h1></body></html>\n", encoding="utf-8")
    return pdf, html


def reparsed(message: EmailMessage) -> EmailMessage:
    """The message as a receiver reads it: flattened to bytes and parsed back."""
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def test_composed_message_headers_body_and_attachments(report_files: tuple[Path, Path]) -> None:
    pdf, html = report_files
    message = compose_report_email(
        subject="Weather benchmark: latency run 2026-11-27",
        body_text="Latency p95 20.3 s.\n",
        body_html="<p>Latency p95 <b>20.3 s</b>.</p>",
        recipients="ops@example.org; lead@example.org",
        sender="weatherbench@localhost",
        attachments=[pdf, html],
    )
    received = reparsed(message)
    assert received["Subject"] == "Weather benchmark: latency run 2026-11-27"
    assert received["From"] == "weatherbench@localhost"
    assert [a.addr_spec for a in received["To"].addresses] == ["ops@example.org", "lead@example.org"]
    assert received["Message-ID"].startswith("<") and received["Message-ID"].endswith("@localhost>")
    assert received["Date"].datetime is not None

    body = received.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content() == "Latency p95 20.3 s.\n"
    html_body = received.get_body(preferencelist=("html",))
    assert html_body is not None and "<b>20.3 s</b>" in html_body.get_content()

    attachments = list(received.iter_attachments())
    assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [
        ("benchmark-report 2026.pdf", "application/pdf"),
        ("report.html", "text/html"),
    ]
    assert attachments[0].get_payload(decode=True) == PDF_BYTES
    assert attachments[1].get_payload(decode=True) == html.read_bytes()


def test_message_without_html_or_attachments_is_plain_text() -> None:
    message = compose_report_email(
        subject="s", body_text="only text\n", recipients=["a@x.org"], sender="b@x.org", attachments=[]
    )
    assert message.get_content_type() == "text/plain"
    assert reparsed(message).get_content() == "only text\n"


def test_missing_attachment_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "report.pdf"
    with pytest.raises(MailError, match=f"attachment {missing} does not exist"):
        compose_report_email(
            subject="s", body_text="t", recipients="a@x.org", sender="b@x.org", attachments=[missing]
        )


def test_bad_sender_and_header_injection_are_refused() -> None:
    with pytest.raises(MailError, match="sender: 'weatherbench' is not an e-mail address"):
        compose_report_email(subject="s", body_text="t", recipients="a@x.org", sender="weatherbench")
    with pytest.raises(MailError, match="subject"):
        compose_report_email(
            subject="report\r\nBcc: victim@x.org", body_text="t", recipients="a@x.org", sender="b@x.org"
        )
