"""Benchmark reports: stored runs in, a PDF and a self-contained HTML page out.

    result = build_report(store, ["20261127T070251Z-reference-9a8a"])
    result.pdf, result.html, result.subject, result.status, result.regressions

`targets` judges runs against the guide's section 10, `regressions` compares
them with their history, `content` decides what the report says, and the
`render_*` modules lay the same document out as PDF and HTML.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import REPO_ROOT
from weatherbench.report.content import RunContext, compose, overall_status, regression_sentence
from weatherbench.report.data import RunData
from weatherbench.report.document import Banner, Bullets, Document
from weatherbench.report.regressions import (
    DEFAULT_BASELINE_RUNS,
    DEFAULT_RELATIVE_THRESHOLD,
    HEADLINES,
    Comparison,
    detect_regressions,
    regressions,
)
from weatherbench.report.render_html import render_html
from weatherbench.report.render_pdf import render_pdf
from weatherbench.report.targets import Status, TargetResult, evaluate_targets
from weatherbench.store import ResultsStore

REPORTS_DIR = REPO_ROOT / "reports"
TREND_RUNS = 10


class ReportError(ValueError):
    """A report cannot be built from what was asked for (the message says why)."""


@dataclass
class ReportResult:
    pdf: Path
    html: Path
    document: Document
    status: Status
    targets: list[TargetResult]
    regressions: list[Comparison]
    run_ids: list[str]
    tests: list[str]
    build_seconds: float

    @property
    def subject(self) -> str:
        tests = ", ".join(dict.fromkeys(self.tests))
        subject = f"[weatherbench] {self.status.label}: {tests}"
        if self.regressions:
            worst = self.regressions[0]
            change = f"{worst.headline.label} {worst.relative_change:+.0%}"
            subject += f" - {len(self.regressions)} REGRESSION(S), {change}"
        return subject + f" ({self.run_ids[-1]})"

    def email_body(self) -> str:
        lines = [self.document.title, self.document.subtitle, ""]
        banner = next((b for b in self.document.blocks if isinstance(b, Banner)), None)
        if banner is not None:
            lines += [banner.text, ""]
        findings = next((b for b in self.document.blocks if isinstance(b, Bullets) and b.numbered), None)
        if findings is not None:
            lines += ["Findings:"] + [f"  {n}. {text}" for n, text in enumerate(findings.items, 1)] + [""]
        lines.append("Targets (guide section 10):")
        for result in self.targets:
            lines.append(
                f"  {result.status.label:8s} {result.target.name}: {result.measured_text} "
                f"(target {result.target.target_text}, critical {result.target.critical_text})"
            )
        if self.regressions:
            lines += ["", "Regressions:"] + [f"  {regression_sentence(c)}" for c in self.regressions]
        lines += ["", f"The full report is attached ({self.pdf.name}); an HTML copy is at {self.html}."]
        return "\n".join(lines) + "\n"


def _history(store: ResultsStore, run: RunData) -> dict[str, list]:
    history = {}
    for headline in HEADLINES:
        if not run.has(headline.metric, headline.component):
            continue
        points = store.history(headline.metric, test=run.test, component=headline.component, limit=TREND_RUNS)
        history[headline.metric] = [
            p for p in points if p.status != "error" and p.started_at <= run.record.started_at
        ]
    return history


def build_report(
    store: ResultsStore,
    run_ids: Sequence[str],
    out_dir: Path = REPORTS_DIR,
    name: str | None = None,
    baseline_runs: int = DEFAULT_BASELINE_RUNS,
    relative: float = DEFAULT_RELATIVE_THRESHOLD,
    baseline_run_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> ReportResult:
    """Build the PDF and HTML report of these runs; ``baseline_run_ids`` compares against given runs."""
    if not run_ids:
        raise ReportError("no runs given: name at least one run (see `benchmark_system runs`)")
    if baseline_runs < 1:
        raise ReportError(f"baseline runs must be >= 1, got {baseline_runs}")
    if not 0 <= relative < 10:
        raise ReportError(f"relative threshold must be between 0 and 10 (a fraction), got {relative}")
    started = time.perf_counter()
    generated = now or datetime.now(UTC)
    contexts = []
    for run_id in dict.fromkeys(run_ids):
        run = RunData.load(store, run_id)
        if run.record.status == "running":
            raise ReportError(f"run {run_id} is still running: report it when it has finished")
        comparisons = detect_regressions(store, run, baseline_runs, relative, baseline_run_ids)
        contexts.append(RunContext(run, comparisons, _history(store, run)))
    targets = evaluate_targets([c.data for c in contexts])
    document = compose(contexts, targets, generated, baseline_runs, relative)
    found = sorted(
        (c for context in contexts for c in regressions(context.comparisons)),
        key=lambda c: -abs(c.relative_change) if c.relative_change == c.relative_change else 0,
    )
    if name is None:
        name = contexts[0].data.run_id if len(contexts) == 1 else f"suite-{generated:%Y%m%dT%H%M%SZ}"
    pdf = render_pdf(document, out_dir / f"{name}.pdf")
    html = render_html(document, out_dir / f"{name}.html")
    return ReportResult(
        pdf=pdf,
        html=html,
        document=document,
        status=overall_status(targets, contexts),
        targets=targets,
        regressions=found,
        run_ids=[c.data.run_id for c in contexts],
        tests=[c.data.test for c in contexts],
        build_seconds=time.perf_counter() - started,
    )
