"""The local validation page as a PDF (reportlab), for the department's files and the ethics board.

Everything on it is computed by :func:`core.validation.validate` on the same patients as the
page: the ROC curves are drawn by reportlab from the same points (no browser or plotly export
needed, so the report also builds where no Chromium is installed), the tables hold the same
formatted numbers. Patients appear only as counts: the report carries no case key.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from reportlab.graphics.charts.legends import LineLegend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from core.provenance import RESEARCH_NOTICE
from core.validation import (
    DCA_THRESHOLDS,
    DECISION_CURVE_REPORT_THRESHOLDS,
    LocalValidation,
    ModelValidation,
    ScoredPatients,
    cohort_sentence,
    difference_sentence,
    summary_rows,
)

_COLOURS = (colors.HexColor("#d62728"), colors.HexColor("#1f77b4"))  # DL red, clinical blue, as on the page
_GRID = TableStyle(
    [
        ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
        ("FONTSIZE", (0, 0), (-1, -1), 8),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
)


def _models(result: LocalValidation) -> list[ModelValidation]:
    return [m for m in (result.dl, result.clinical) if m is not None]


def _roc_drawing(result: LocalValidation) -> Drawing:
    """Both ROC curves and the chance diagonal, 1 − specificity on x, sensitivity on y (0–1)."""
    drawing = Drawing(82 * mm, 78 * mm)
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 12 * mm, 14 * mm, 62 * mm, 58 * mm
    models = _models(result)
    plot.data = [list(zip(m.roc_fpr.tolist(), m.roc_tpr.tolist(), strict=True)) for m in models] + [[(0, 0), (1, 1)]]
    for i in range(len(models)):
        plot.lines[i].strokeColor = _COLOURS[i]
        plot.lines[i].strokeWidth = 1.4
    plot.lines[len(models)].strokeColor = colors.grey
    plot.lines[len(models)].strokeDashArray = (2, 2)
    for axis in (plot.xValueAxis, plot.yValueAxis):
        axis.valueMin, axis.valueMax, axis.valueStep = 0.0, 1.0, 0.2
        axis.labels.fontSize = 7
    drawing.add(plot)
    drawing.add(String(43 * mm, 4 * mm, "1 − specificity", fontSize=8, textAnchor="middle"))
    drawing.add(String(3 * mm, 76 * mm, "Sensitivity", fontSize=8))
    legend = LineLegend()
    legend.x, legend.y, legend.fontSize = 40 * mm, 26 * mm, 7
    legend.colorNamePairs = [(_COLOURS[i], f"{m.name}, AUC {m.auc.auc:.3f}") for i, m in enumerate(models)]
    drawing.add(legend)
    return drawing


def _summary_table(result: LocalValidation) -> Table:
    """The page's summary table turned on its side: one row per figure, one column per model."""
    rows = summary_rows(result)
    header = ["", *[row["model"] for row in rows]]
    figures = [key for key in rows[0] if key != "model"]
    width = 120 * mm / len(rows)
    return Table(
        [header] + [[key, *[row[key] for row in rows]] for key in figures],
        colWidths=[45 * mm] + [width] * len(rows),
        style=_GRID,
    )


def _calibration_table(result: LocalValidation) -> Table:
    """Quantile bins per model: mean predicted probability against the observed early-recurrence rate."""
    cells = [["Model", "bin", "patients", "mean predicted", "observed rate"]]
    for model in _models(result):
        for i, (predicted, observed, n) in enumerate(model.calibration.bins, start=1):
            cells.append([model.name, str(i), str(n), f"{predicted:.0%}", f"{observed:.0%}"])
    return Table(cells, style=_GRID)


def _decision_curve_table(result: LocalValidation, thresholds: np.ndarray) -> Table:
    """Net benefit (true positives per patient, less false positives weighted by the threshold odds)."""
    index = [int(np.argmin(np.abs(DCA_THRESHOLDS - t))) for t in thresholds]
    cells = [["Threshold probability", *[f"{t:.0%}" for t in thresholds]]]
    for model in _models(result):
        cells.append([model.name, *[f"{model.net_benefit[i]:.3f}" for i in index]])
    cells.append(["Treat all", *[f"{result.treat_all[i]:.3f}" for i in index]])
    cells.append(["Treat none", *["0.000"] * len(index)])
    return Table(cells, style=_GRID)


def validation_report_pdf(
    cohort: ScoredPatients,
    result: LocalValidation,
    generated_at: datetime | None = None,
    thresholds: np.ndarray = DECISION_CURVE_REPORT_THRESHOLDS,
) -> bytes:
    """The PDF of the validation page for one model's patients (``result = validate(cohort…)``)."""
    styles = getSampleStyleSheet()
    body, small, heading = styles["BodyText"], styles["Italic"], styles["Heading3"]
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    story: list[Any] = [
        Paragraph("Early recurrence of intrahepatic cholangiocarcinoma: local validation report", styles["Title"]),
        Paragraph(f"<b>{RESEARCH_NOTICE}</b>", body),
        Paragraph(f"Generated {when} · model {escape(cohort.model_name)} · sha256 {cohort.model_sha256[:16]}…", body),
        Paragraph(escape(cohort_sentence(cohort, result)), body),
        Paragraph(f"Clinical model: {escape(cohort.clinical_model)}.", body),
    ]
    for warning in (cohort.weights_warning, result.warning):
        if warning:
            story.append(Paragraph(f"<b>Warning:</b> {escape(warning)}", body))
    story += [Spacer(1, 3 * mm), _summary_table(result), Spacer(1, 2 * mm)]
    story.append(Paragraph(escape(difference_sentence(result)), body))
    story += [
        Paragraph("ROC curves (patient level)", heading),
        _roc_drawing(result),
        Paragraph("Calibration (bins of about equal numbers of patients by predicted risk, ties together)", heading),
        _calibration_table(result),
        Paragraph("Decision curve: net benefit", heading),
        _decision_curve_table(result, thresholds),
        Spacer(1, 3 * mm),
        Paragraph(
            "One patient per saved case, its latest analysis; outcomes unknown (followed under 365 days without "
            "recurrence) are left out, never counted as negatives. The deep-learning number is an uncalibrated mean "
            "patch probability: its calibration shows how far it is from a risk on these patients. AUC 95% CIs and "
            "the test of the difference are DeLong's.",
            small,
        ),
    ]
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, title="Local validation", author="iCCA dashboard").build(story)
    return buffer.getvalue()
