"""Report e-mail: where to send it (SMTP settings), what to send (the message) and the sending.

This module owns the SMTP settings of the benchmark suite, the composition of
report e-mails and their delivery over SMTP. It is plain Python (smtplib and
email from the standard library) and never imports Airflow; an Airflow hook
adapter passes a Connection's fields to ``smtp_settings_from_connection``.

Settings (``resolve_smtp_settings``), first match wins; they are never read
from a file in the repository:

1. ``WB_SMTP_URL``: an Airflow SMTP connection, as a URI
   (``smtp://user:pass@host:587?from_email=bench%40example.org&disable_ssl=true``)
   or in Airflow's JSON connection form.
2. ``AIRFLOW_CONN_SMTP_DEFAULT``: the same, as Airflow itself reads it for the
   connection ``smtp_default``.
3. The local sink (``weatherbench.mailsink``): 127.0.0.1, port
   ``WB_MAIL_SINK_PORT`` (default 8025), no TLS, no login.

``WB_MAIL_FROM`` overrides the sender of any of them; the default sender is
``weatherbench@localhost``. An empty variable counts as unset.

Connection semantics are those of the Airflow SMTP provider
(``airflow.providers.smtp.hooks.smtp.SmtpHook``, provider 3.2.0):

* ``disable_ssl`` (default False): SSL is ON unless the connection disables
  it, i.e. a connection with no extras talks implicit TLS (``SMTP_SSL``).
* ``disable_tls`` (default False): STARTTLS is ON unless disabled. With both
  on, SSL wins (the provider's async client does the same; its sync client
  would also try STARTTLS inside the SSL session, which servers refuse).
  So: SSL unless ``disable_ssl``; else STARTTLS unless ``disable_tls``; else none.
* ``from_email``: the sender; ``timeout``: seconds, default 30.
* No port: smtplib's default, 465 with SSL and 25 otherwise.
* Login only when a login is set (the provider also needs a password; here
  an empty password is sent as such).

One deliberate difference: the provider tests extras with ``bool(value)``, so
the URI query ``disable_ssl=false`` (a non-empty string) would count as
true there. Here booleans are parsed as words (true/false, yes/no, on/off,
1/0; empty is false), and anything else is an error naming the extra.
Other provider extras (``retry_limit``, ``ssl_context``, ``auth_type``,
templates) are ignored: certificates are always verified against the
system's trust store, and a failed delivery is not retried.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

Security = Literal["none", "starttls", "ssl"]
SECURITY_MODES: tuple[Security, ...] = ("none", "starttls", "ssl")

URL_VARIABLE = "WB_SMTP_URL"
AIRFLOW_VARIABLE = "AIRFLOW_CONN_SMTP_DEFAULT"
SINK_PORT_VARIABLE = "WB_MAIL_SINK_PORT"
SENDER_VARIABLE = "WB_MAIL_FROM"

DEFAULT_SINK_HOST = "127.0.0.1"
DEFAULT_SINK_PORT = 8025
DEFAULT_SENDER = "weatherbench@localhost"
DEFAULT_TIMEOUT_S = 30.0
LOCAL_SINK_SOURCE = "local sink (default)"
SINK_HINT = "start the local sink with `benchmark_system mail-sink start` or set WB_SMTP_URL"

# Attachment types of the reports, fixed here so they do not depend on the
# machine's mime.types; other extensions fall back to the mimetypes module.
KNOWN_TYPES = {
    ".pdf": "application/pdf",
    ".html": "text/html",
    ".htm": "text/html",
    ".csv": "text/csv",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}

# A deliberately simple address check: ASCII local part without spaces or
# specials, and a dot-separated host name (a single label such as
# "localhost" is allowed). Display names ("Ann <ann@x.org>") are not accepted.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_SEPARATORS = re.compile(r"[,;\s]+")
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", ""})


class MailError(Exception):
    """Settings, a message or a delivery is wrong; the text names what and where."""


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to deliver mail. ``source`` says where the settings came from."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    security: Security = "none"
    sender: str = DEFAULT_SENDER
    timeout_s: float = DEFAULT_TIMEOUT_S
    source: str = "explicit"

    def __post_init__(self) -> None:
        if not self.host:
            raise MailError(f"{self.source}: SMTP host is empty")
        if not 1 <= self.port <= 65535:
            raise MailError(f"{self.source}: SMTP port {self.port} is not in 1..65535")
        if self.security not in SECURITY_MODES:
            raise MailError(
                f"{self.source}: security {self.security!r} is not one of {', '.join(SECURITY_MODES)}"
            )
        if not self.timeout_s > 0:
            raise MailError(f"{self.source}: timeout {self.timeout_s} must be > 0 seconds")

    @property
    def address(self) -> str:
        """host:port, bracketing an IPv6 host."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def describe(self) -> str:
        """One line for logs, without the password."""
        login = f", login {self.username}" if self.username else ""
        return (
            f"SMTP {self.address} ({self.security}{login}), from {self.sender}; settings from {self.source}"
        )


@dataclass(frozen=True)
class DeliveryReceipt:
    """What the server accepted: ``refused`` maps each refused recipient to (SMTP code, reply)."""

    message_id: str
    recipients: list[str]
    host: str
    port: int
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def accepted(self) -> list[str]:
        return [r for r in self.recipients if r not in self.refused]


# -- settings --------------------------------------------------------------


def _extra_bool(extra: Mapping[str, Any], key: str, source: str) -> bool:
    value = extra.get(key, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise MailError(f"{source}: extra {key}={value!r} is not a boolean (use true or false)")


def _port(value: Any, source: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        port = int(str(value).strip())
    except ValueError:
        raise MailError(f"{source}: port {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise MailError(f"{source}: port {port} is not in 1..65535")
    return port


def smtp_settings_from_connection(
    host: str | None,
    port: int | str | None,
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any] | str | None,
    *,
    source: str = "Airflow connection",
) -> SmtpSettings:
    """Settings from the fields of an Airflow SMTP connection (see the module docstring for the rules).

    ``extra`` is the connection's extra as a mapping or as its JSON text.
    """
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError as exc:
            raise MailError(f"{source}: extra is not valid JSON: {exc}") from None
    extra = extra or {}
    if not isinstance(extra, Mapping):
        raise MailError(f"{source}: extra must be a JSON object, not {type(extra).__name__}")
    if not host:
        raise MailError(f"{source}: the connection has no host")
    if not _extra_bool(extra, "disable_ssl", source):
        security: Security = "ssl"
    elif not _extra_bool(extra, "disable_tls", source):
        security = "starttls"
    else:
        security = "none"
    # smtplib's own defaults when no port is given, as the provider leaves it to smtplib.
    default_port = smtplib.SMTP_SSL_PORT if security == "ssl" else smtplib.SMTP_PORT
    raw_timeout = extra.get("timeout", DEFAULT_TIMEOUT_S)
    try:
        timeout_s = float(raw_timeout)
    except (TypeError, ValueError):
        raise MailError(f"{source}: extra timeout={raw_timeout!r} is not a number of seconds") from None
    sender = extra.get("from_email") or DEFAULT_SENDER
    return SmtpSettings(
        host=host,
        port=_port(port, source, default_port),
        username=login or None,
        password=password if login else None,
        security=security,
        sender=_checked_address(str(sender), f"{source}: from_email"),
        timeout_s=timeout_s,
        source=source,
    )


def smtp_settings_from_url(url: str, *, source: str = URL_VARIABLE) -> SmtpSettings:
    """Settings from an Airflow connection URI (``smtp://...``) or Airflow's JSON connection form.

    In the URI, user and password are percent-decoded, and the query holds the
    extras (or, as Airflow allows, one ``__extra__`` parameter with them as JSON).
    """
    text = url.strip()
    if not text:
        raise MailError(f"{source}: empty connection")
    if text.startswith("{"):
        return _settings_from_json(text, source)
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise MailError(
            f"{source}: bad connection URI ({exc}); expected smtp://user:pass@host:port"
        ) from None
    if parts.scheme.lower() != "smtp":
        raise MailError(
            f"{source}: scheme {parts.scheme or '(none)'!r} is not 'smtp'; "
            "expected smtp://user:pass@host:port?from_email=...&disable_ssl=true"
        )
    extra: Mapping[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "__extra__" in extra:
        extra = extra["__extra__"]
    return smtp_settings_from_connection(
        unquote(parts.hostname or ""),
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        extra,
        source=source,
    )


def _settings_from_json(text: str, source: str) -> SmtpSettings:
    try:
        conn = json.loads(text)
    except ValueError as exc:
        raise MailError(f"{source}: not a valid JSON connection: {exc}") from None
    if not isinstance(conn, dict):
        raise MailError(f"{source}: a JSON connection must be an object")
    conn_type = str(conn.get("conn_type") or "smtp").lower()
    if conn_type != "smtp":
        raise MailError(f"{source}: conn_type {conn_type!r} is not 'smtp'")
    return smtp_settings_from_connection(
        conn.get("host"),
        conn.get("port"),
        conn.get("login"),
        conn.get("password"),
        conn.get("extra"),
        source=source,
    )


def sink_port(environ: Mapping[str, str] | None = None) -> int:
    """The local sink's port: WB_MAIL_SINK_PORT, default 8025."""
    env = os.environ if environ is None else environ
    return _port(env.get(SINK_PORT_VARIABLE), SINK_PORT_VARIABLE, DEFAULT_SINK_PORT)


def resolve_smtp_settings(environ: Mapping[str, str] | None = None) -> SmtpSettings:
    """Settings from the environment: WB_SMTP_URL, else AIRFLOW_CONN_SMTP_DEFAULT, else the local sink."""
    env = os.environ if environ is None else environ
    if env.get(URL_VARIABLE, "").strip():
        settings = smtp_settings_from_url(env[URL_VARIABLE], source=URL_VARIABLE)
    elif env.get(AIRFLOW_VARIABLE, "").strip():
        settings = smtp_settings_from_url(env[AIRFLOW_VARIABLE], source=AIRFLOW_VARIABLE)
    else:
        settings = SmtpSettings(
            host=DEFAULT_SINK_HOST, port=sink_port(env), security="none", source=LOCAL_SINK_SOURCE
        )
    sender = env.get(SENDER_VARIABLE, "").strip()
    if sender:
        settings = replace(settings, sender=_checked_address(sender, SENDER_VARIABLE))
    return settings


# -- addresses -------------------------------------------------------------


def _checked_address(candidate: str, what: str) -> str:
    _, address = parseaddr(candidate)
    if not address or address != candidate.strip() or not _ADDRESS.fullmatch(address):
        raise MailError(f"{what}: {candidate!r} is not an e-mail address (expected local@domain)")
    return address


def parse_recipients(value: str | Sequence[str]) -> list[str]:
    """Addresses from a comma, semicolon or space separated string (or a list of such strings).

    Each address must be a bare local@domain; duplicates (ignoring case) are dropped, order kept.
    """
    items = [value] if isinstance(value, str) else list(value)
    recipients: list[str] = []
    seen: set[str] = set()
    for item in items:
        for token in _SEPARATORS.split(str(item)):
            if not token:
                continue
            address = _checked_address(token, "recipient")
            if address.lower() not in seen:
                seen.add(address.lower())
                recipients.append(address)
    if not recipients:
        raise MailError("no recipients given")
    return recipients


# -- composing -------------------------------------------------------------


def attachment_type(path: Path) -> tuple[str, str]:
    """(maintype, subtype) for a file name; application/octet-stream when unknown."""
    mime = KNOWN_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    maintype, _, subtype = (mime or "application/octet-stream").partition("/")
    return maintype, subtype


def compose_report_email(
    *,
    subject: str,
    body_text: str,
    recipients: str | Sequence[str],
    sender: str,
    attachments: Sequence[Path] = (),
    body_html: str | None = None,
) -> EmailMessage:
    """A report e-mail: text body (plus an HTML alternative if given) and each file attached as is."""
    to = parse_recipients(recipients)
    sender = _checked_address(sender, "sender")
    files = []
    for path in map(Path, attachments):
        if not path.is_file():
            raise MailError(f"attachment {path} does not exist or is not a file")
        files.append((path, path.read_bytes()))

    message = EmailMessage()
    try:
        message["Subject"] = subject
    except ValueError as exc:  # a line break in a header would let it inject further headers
        raise MailError(f"subject {subject!r}: {exc}") from None
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(usegmt=True)
    # An explicit domain: make_msgid's default calls socket.getfqdn(), which can block on DNS.
    message["Message-ID"] = make_msgid(domain=Address(addr_spec=sender).domain)
    message.set_content(body_text)
    if body_html is not None:
        message.add_alternative(body_html, subtype="html")
    for path, data in files:
        maintype, subtype = attachment_type(path)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return message


# -- sending ---------------------------------------------------------------


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply(exc.smtp_code, exc.smtp_error)
    return str(exc) or type(exc).__name__


def _reply(code: int, text: bytes | str) -> str:
    """An SMTP reply as one line: code and text."""
    return f"{code} {_text(text)}".strip()


def _text(text: bytes | str) -> str:
    return text.decode(errors="replace") if isinstance(text, bytes) else text


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    context = ssl.create_default_context()
    # local_hostname is given because smtplib's default (socket.getfqdn()) can block on DNS.
    local_hostname = socket.gethostname() or "localhost"
    if settings.security == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            local_hostname=local_hostname,
            timeout=settings.timeout_s,
            context=context,
        )
    else:
        client = smtplib.SMTP(
            settings.host, settings.port, local_hostname=local_hostname, timeout=settings.timeout_s
        )
    try:
        if settings.security == "starttls":
            client.starttls(context=context)
        if settings.username:
            client.login(settings.username, settings.password or "")
    except BaseException:
        client.close()
        raise
    return client


def _envelope_recipients(message: EmailMessage) -> list[str]:
    fields = [v for header in ("To", "Cc", "Bcc") for v in message.get_all(header, [])]
    return [address for _, address in getaddresses([str(v) for v in fields]) if address]


def send_email(message: EmailMessage, settings: SmtpSettings) -> DeliveryReceipt:
    """Deliver a message over SMTP to its To, Cc and Bcc recipients (Bcc is not transmitted).

    A message without Message-ID gets one. Recipients the server refuses while it
    accepts others are reported in the receipt; if it refuses all, that is an error.
    """
    recipients = _envelope_recipients(message)
    if not recipients:
        raise MailError("the message has no recipients (To, Cc or Bcc)")
    sender = parseaddr(str(message.get("From", "")))[1] or settings.sender
    if message.get("Message-ID") is None:
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    where = f"SMTP server {settings.address}"
    hint = SINK_HINT if settings.source == LOCAL_SINK_SOURCE else f"check {settings.source}"

    try:
        client = _connect(settings)
    except ssl.SSLError as exc:
        raise MailError(
            f"TLS with {where} failed ({settings.security}): {exc}; "
            f"the server may not speak TLS that way on this port, {hint}"
        ) from exc
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(
            f"{where} refused the login of {settings.username!r}: {_reason(exc, settings.timeout_s)}"
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise MailError(f"{where} does not support {settings.security} or login: {exc}; {hint}") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"cannot reach {where}: {_reason(exc, settings.timeout_s)}; {hint}") from exc

    try:
        with client:
            refused = client.send_message(message, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        detail = "; ".join(f"{rcpt}: {_reply(*reply)}" for rcpt, reply in exc.recipients.items())
        raise MailError(f"{where} refused every recipient: {detail}") from exc
    except smtplib.SMTPSenderRefused as exc:
        raise MailError(f"{where} refused the sender {sender}: {_reason(exc, settings.timeout_s)}") from exc
    except smtplib.SMTPDataError as exc:
        raise MailError(f"{where} refused the message: {_reason(exc, settings.timeout_s)}") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"delivery to {where} failed: {_reason(exc, settings.timeout_s)}") from exc

    return DeliveryReceipt(
        message_id=str(message["Message-ID"]),
        recipients=recipients,
        host=settings.host,
        port=settings.port,
        refused={rcpt: (code, _text(text)) for rcpt, (code, text) in refused.items()},
    )
