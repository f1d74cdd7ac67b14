"""Reports built from real stored runs: the PDF's text and pages, the HTML copy, regressions, the CLI.

The runs are real quick-profile exports (tests/fixtures/results) imported
into a temporary SQLite store, with a seeded history before them; the
PDF is read back with pypdf and its pages rendered with PDFium.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from pypdf import PdfReader

from tests.report_data import LATENCY_RUN, SPARK_SCALING_RUN, clone, load_export, seed_history
from weatherbench import cli
from weatherbench.report import ReportError, ReportResult, build_report
from weatherbench.report.data import RunData
from weatherbench.report.document import Chart
from weatherbench.report.regressions import Change
from weatherbench.report.targets import Status, format_value
from weatherbench.store import ResultsStore

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
SLOWER = 1.8  # the seeded regression: end-to-end and window-close latency 80% slower


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    with ResultsStore(f"sqlite:///{tmp_path}/results.db") as results:
        yield results


def flat(text: str) -> str:
    return " ".join(text.split())


def pdf_text(path: Path) -> list[str]:
    return [flat(page.extract_text()) for page in PdfReader(path).pages]


def add_run(
    store: ResultsStore, run_id: str, started: datetime, scale: dict[str, float] | None = None
) -> str:
    return store.import_run(clone(load_export(LATENCY_RUN), run_id, started, scale=scale))


def seed_regression(store: ResultsStore) -> str:
    """Five lossless, steady latency runs, then one whose end-to-end latency is 80% slower."""
    seed_history(store, load_export(LATENCY_RUN), runs=5, before=NOW)
    scale = {name: SLOWER for name in ("latency.e2e.p95", "latency.window_close.p95")}
    return add_run(store, "20261127T060000Z-latency-slow", NOW, scale)


@pytest.fixture
def regressed(store: ResultsStore) -> str:
    return seed_regression(store)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[ResultsStore, str, ReportResult]:
    """One report of the seeded regression, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("report")
    results = ResultsStore(f"sqlite:///{folder}/results.db")
    run_id = seed_regression(results)
    yield results, run_id, build_report(results, [run_id], folder / "out")
    results.close()


def test_page_one_holds_the_targets_table_with_measured_values_and_verdicts(built):
    store, run_id, result = built
    page_one = pdf_text(result.pdf)[0]
    assert "Verdict against the guide's targets" in page_one
    for row in result.targets:
        t = row.target
        assert f"{t.name} {t.target_text} {t.critical_text} {row.measured_text}" in page_one, t.name
        where = row.measured.where if row.measured else ""
        assert flat(f"{row.measured_text} {where}") in page_one
        after = page_one.split(f"{t.name} {t.target_text}", 1)[1]
        next_status = re.search(r"\b(PASS|WARN|CRITICAL|n/a)\b", after.split(row.measured_text, 1)[1]).group(
            1
        )
        assert next_status == row.status.label, t.name
    run = RunData.load(store, run_id)
    e2e = max(run.value("latency.e2e.p95", s.index) for s in run.steps)
    e2e_row = next(r for r in result.targets if r.target.name.startswith("End-to-end"))
    assert e2e_row.measured_text == format_value(e2e, "ms")
    assert e2e_row.status is e2e_row.target.judge(e2e)
    loss = next(r for r in result.targets if r.target.name == "Message loss rate")
    assert loss.status is Status.PASS and "0 of " in page_one  # the fixture run lost nothing
    findings = page_one.split("Findings", 1)[1]
    assert re.search(r"1 .+ 2 .+ 3 ", findings), "three numbered findings"


def test_seeded_regression_is_flagged_in_the_report_and_the_subject(built):
    _store, _run_id, result = built
    flagged = {(c.headline.metric, c.change) for c in result.regressions}
    assert ("latency.e2e.p95", Change.REGRESSION) in flagged
    assert ("latency.window_close.p95", Change.REGRESSION) in flagged
    # Only the seeded metrics regressed: the history's 5% jitter stays inside the noise.
    assert {c.headline.metric for c in result.regressions} == {"latency.e2e.p95", "latency.window_close.p95"}
    assert "REGRESSION" in result.subject and "2 REGRESSION(S)" in result.subject
    assert result.status.rank >= Status.WARN.rank
    pages = pdf_text(result.pdf)
    assert "Regression: End-to-end latency p95" in pages[0] or "Regression: Window close" in pages[0]
    trends = next(p for p in pages if "Trends and regressions" in p)
    e2e = next(c for c in result.regressions if c.headline.metric == "latency.e2e.p95")
    assert f"End-to-end latency p95 baseline {format_value(e2e.value, 'ms')}" in trends
    assert f"{e2e.relative_change:+.0%} REGRESSION" in trends
    assert len(e2e.baseline) == 5
    assert e2e.value / e2e.median == pytest.approx(SLOWER, rel=0.1)


def test_a_run_like_its_history_has_no_regression(store, tmp_path):
    seed_history(store, load_export(LATENCY_RUN), runs=5, before=NOW)
    steady = add_run(store, "20261127T060000Z-latency-same", NOW)
    result = build_report(store, [steady], tmp_path / "out")
    assert result.regressions == []
    assert "REGRESSION" not in result.subject
    trends = next(p for p in pdf_text(result.pdf) if "Trends and regressions" in p)
    assert "WITHIN NOISE" in trends and "REGRESSION" not in trends


def test_a_first_run_says_there_is_nothing_to_compare(store, tmp_path):
    first = add_run(store, "20261127T060000Z-latency-first", NOW)
    result = build_report(store, [first], tmp_path / "out")
    assert result.regressions == []
    assert "nothing to compare yet" in " ".join(pdf_text(result.pdf))


def test_every_page_has_content_and_charts_are_embedded(built):
    _store, _run_id, result = built
    document = pdfium.PdfDocument(result.pdf)
    try:
        assert len(document) >= 5
        for index in range(len(document)):
            image = document[index].render(scale=0.5).to_pil().convert("L")
            width, height = image.size
            body = image.crop((0, int(height * 0.06), width, int(height * 0.93)))  # without header/footer
            inked = sum(body.histogram()[:200]) / (body.width * body.height)
            assert inked > 0.005, f"page {index + 1} is (nearly) empty"
    finally:
        document.close()
    charts = sum(1 for block in result.document.blocks if isinstance(block, Chart))
    images = sum(len(page.images) for page in PdfReader(result.pdf).pages)
    assert charts >= 5 and images == charts


def test_html_copy_says_the_same_and_is_self_contained(built):
    _store, _run_id, result = built
    html = result.html.read_text()
    assert result.html.with_suffix(".pdf") == result.pdf
    for row in result.targets:
        assert f">{row.target.name}<" in html and f">{row.measured_text}<" in html
    charts = sum(1 for block in result.document.blocks if isinstance(block, Chart))
    assert html.count('src="data:image/png;base64,') == charts
    assert not re.search(r"""(src|href)=["']https?:""", html), "nothing is fetched from outside"
    assert "status-regression" in html


def test_suite_report_covers_every_run_and_names_the_scaling_bottleneck(store, tmp_path):
    latency = add_run(store, "20261127T060000Z-latency-suite", NOW)
    scaling = store.import_run(load_export(SPARK_SCALING_RUN))
    result = build_report(store, [latency, scaling], tmp_path / "out")
    assert result.pdf.name.startswith("suite-")
    text = " ".join(pdf_text(result.pdf))
    assert f"Latency: {latency}" in text and f"Spark worker scaling: {scaling}" in text
    summary = RunData.load(store, scaling).summary
    assert f"Bottleneck named: {summary['bottleneck']}" in text
    efficiency = summary["scaling"][-1]["efficiency"]
    assert f"{efficiency:.0%}" in text
    # With several runs, the verdict table says which run each worst value came from.
    assert re.search(rf"({latency}|{scaling}): ", text)


def test_a_long_footer_is_cut_short_before_the_page_number():
    from reportlab.pdfbase.pdfmetrics import stringWidth

    from weatherbench.report.render_pdf import _fit

    runs = "Runs: " + ", ".join(f"20261207T18{i:02d}00Z-latency-ab{i:02d}" for i in range(8))
    fitted = _fit(runs, "Helvetica", 7, 300)
    assert fitted.endswith("...") and runs.startswith(fitted.removesuffix("..."))
    assert stringWidth(fitted, "Helvetica", 7) <= 300
    assert _fit("Runs: one", "Helvetica", 7, 300) == "Runs: one"


def test_fault_timeline_shows_the_fault_recovery_and_counts(store, tmp_path):
    exported = clone(load_export(LATENCY_RUN), "20261127T060000Z-latency-fault", NOW)
    exported["run"]["summary"]["faults"] = [
        {
            "kind": "kill",
            "target": "spark-worker-1",
            "step_index": 0,
            "at_s": 20.0,
            "recovery_s": 14.5,
            "throughput_dip_percent": 38.0,
            "lost": 0,
            "duplicated": 12,
        }
    ]
    exported["metrics"].append(
        {
            "step": "baseline",
            "step_index": 0,
            "repetition": 0,
            "metric": "fault.recovery_s",
            "component": "spark-worker-1",
            "value": 14.5,
            "non_finite": None,
            "unit": "s",
            "recorded_at": exported["run"]["finished_at"],
        }
    )
    run_id = store.import_run(exported)
    result = build_report(store, [run_id], tmp_path / "out")
    text = " ".join(pdf_text(result.pdf))
    assert "Faults: timeline and recovery" in text
    assert "kill spark-worker-1 20.0 s n/a n/a n/a 14.5 s n/a" in text
    assert "kill spark-worker-1 38.0% n/a 0 12 none" in text
    assert "Fault timeline: kill of spark-worker-1 at 20.0 s." in text
    recovery = next(r for r in result.targets if r.target.name.startswith("Recovery time"))
    assert recovery.measured.value == 14.5 and recovery.status is Status.PASS


def test_bad_input_table_lists_each_kind_and_a_finding_names_the_misses(store, tmp_path):
    exported = clone(load_export(LATENCY_RUN), "20261127T060000Z-bad-input", NOW)

    def kind(name, sent, dead_lettered, reasons, missing=0):
        return {
            "kind": name,
            "sent": sent,
            "dead_lettered": dead_lettered,
            "wrong_reason": 0,
            "missing": missing,
            "reasons": reasons,
        }

    exported["run"]["summary"]["bad_input"] = [
        {
            "step_index": 0,
            "step": "5% bad input",
            "repetition": 0,
            "fraction": 0.05,
            "sent": 21,
            "missing": 1,
            "wrong_reason": 0,
            "unexpected": 0,
            "duplicates": 2,
            "passed": False,
            "kinds": [
                kind("malformed", 11, 11, ["malformed_json"]),
                kind("late", 10, 9, ["late"], missing=1),
            ],
            "good_lost": 0,
            "dropped_by_watermark": 3.0,
        }
    ]
    run_id = store.import_run(exported)
    result = build_report(store, [run_id], tmp_path / "out")
    text = " ".join(pdf_text(result.pdf))
    assert "Bad input: dead letters per kind" in text
    assert "malformed 11 11 malformed_json 0 0" in text
    assert "late 10 9 late 0 1" in text
    assert "5% bad input, repetition 0: 5% of the records sent were bad." in text
    assert "good records lost: 0; dead letters written twice: 2; rows dropped by the watermark" in text
    assert "Bad input: 1 of 21 bad records were not dead-lettered with their reason" in text


def test_bad_requests_fail_with_a_clear_message(store, tmp_path):
    with pytest.raises(ReportError, match="no runs given"):
        build_report(store, [], tmp_path)
    with pytest.raises(KeyError, match="unknown run_id 'nope'"):
        build_report(store, ["nope"], tmp_path)
    with pytest.raises(ReportError, match="baseline runs must be >= 1"):
        build_report(store, ["x"], tmp_path, baseline_runs=0)


def test_cli_report_and_compare(store, regressed, tmp_path, capsys):
    url = store.url
    out = tmp_path / "cli"
    assert cli.main(["report", "--run", regressed, "--results-url", url, "--report-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 regression(s)" in printed and (out / f"{regressed}.pdf").exists()
    base = store.runs(test="latency", limit=10)[-1].run_id  # the oldest history run
    assert cli.main(["compare", base, regressed, "--results-url", url, "--report-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("End-to-end latency p95"))
    assert line.rstrip().endswith("regression")
    base_value = RunData.load(store, base).value("latency.e2e.p95", 0)
    assert format_value(base_value, "ms") in line
    assert cli.main(["compare", regressed, "--results-url", url]) == 2
    assert "give two run ids" in capsys.readouterr().err
    assert cli.main(["report", "--results-url", url]) == 2
    assert cli.main(["report", "--run", regressed, "--email", "not an address", "--results-url", url]) == 2
    assert "not an e-mail address" in capsys.readouterr().err


def test_report_of_a_run_before_newer_runs_only_compares_with_older_ones(store):
    from weatherbench.report.regressions import detect_regressions

    older = seed_history(store, load_export(LATENCY_RUN), runs=3, before=NOW)
    add_run(store, "20261128T060000Z-latency-later", NOW + timedelta(days=1), {"latency.e2e.p95": 3.0})
    comparisons = detect_regressions(store, RunData.load(store, older[-1]))
    e2e = [c for c in comparisons if c.headline.metric == "latency.e2e.p95"]
    assert e2e and all(len(c.baseline) == 2 for c in e2e)  # the two runs before it, not the later one
    assert all(c.change is not Change.REGRESSION for c in comparisons)


def test_cli_imports_a_run_export_once_and_keeps_it_as_it_was(store, tmp_path, capsys):
    exported = load_export(LATENCY_RUN)
    path = tmp_path / f"{LATENCY_RUN}.json"
    path.write_text(json.dumps(exported))
    assert cli.main(["import", str(path), "--results-url", store.url]) == 0
    assert f"{LATENCY_RUN}: imported" in capsys.readouterr().out
    assert cli.main(["import", str(path), "--results-url", store.url]) == 0
    assert f"{LATENCY_RUN}: already stored, skipped" in capsys.readouterr().out
    again = json.loads(json.dumps(store.export_run(LATENCY_RUN)))
    assert again == exported
    path.write_text('{"format": "something else"}')
    assert cli.main(["import", str(path), "--results-url", store.url]) == 2
    assert "not a run export" in capsys.readouterr().err


def metric_row(exported: dict, metric: str, component: str, value: float, unit: str) -> dict:
    return {
        "step": "baseline",
        "step_index": 0,
        "repetition": 0,
        "metric": metric,
        "component": component,
        "value": value,
        "non_finite": None,
        "unit": unit,
        "recorded_at": exported["run"]["finished_at"],
    }


def test_alerts_that_fired_are_listed_with_their_steps(store, tmp_path):
    exported = clone(load_export(LATENCY_RUN), "20261127T060000Z-latency-alerts", NOW)
    exported["metrics"] += [
        metric_row(exported, "prometheus.failed_queries", "prometheus", 0.0, "queries"),
        metric_row(exported, "alerts.firing.MachineCpuCritical", "critical", 35.0, "s"),
        metric_row(exported, "alerts.firing.SparkBatchTimeOverInterval", "warning", 10.0, "s"),
    ]
    run_id = store.import_run(exported)
    text = " ".join(pdf_text(build_report(store, [run_id], tmp_path / "out").pdf))
    assert "Alerts (Prometheus)" in text
    # Critical first; the step label and the summed firing time.
    assert (
        "MachineCpuCritical CRITICAL baseline 35.0 s SparkBatchTimeOverInterval WARN baseline 10.0 s" in text
    )


def test_a_run_without_monitoring_has_no_alerts_section(built):
    _, _, result = built
    assert "Alerts (Prometheus)" not in " ".join(pdf_text(result.pdf))


def test_a_skipped_step_says_why(store, tmp_path):
    exported = clone(load_export(LATENCY_RUN), "20261127T060000Z-latency-skipped", NOW)
    steps = exported["run"]["summary"]["steps"]
    reason = "the stack is an external cluster (backend external): the suite measures it but does not resize"
    steps.append({**steps[0], "index": 1, "label": "spark_workers=4", "skipped": reason, "sustained": None})
    run_id = store.import_run(exported)
    text = " ".join(pdf_text(build_report(store, [run_id], tmp_path / "out").pdf))
    assert "spark_workers=4" in text and f"spark_workers=4: skipped: {reason}" in text
