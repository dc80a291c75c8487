"""A one-page PDF of a saved case for the chart and the tumour board (reportlab).

What is on it, all from the database (the model is not re-run): the slice and the JET overlay
with its colour bar, the outline's measurements, the deep-learning number with its fold
spread and outline sensitivity when saved, the clinical risk with its 95% CI, the model's
identity and card line, the outcome when recorded, and the research-use notice. The
patient appears only as the case key (a pseudonym).
"""

from __future__ import annotations

import io
from typing import Any
from xml.sax.saxutils import escape

import cv2
import numpy as np
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from core.heatmap import colour_bar, draw_outline, jet_overlay, roi_crop_box
from core.imaging import CtSlice, display_image
from core.outline import measure_outline
from core.provenance import RESEARCH_NOTICE
from core.uncertainty import sensitivity_table, spread_headline


def _png(rgb: np.ndarray) -> io.BytesIO:
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image")
    return io.BytesIO(data.tobytes())


def _images(saved: Any) -> tuple[io.BytesIO, io.BytesIO, io.BytesIO]:
    """(slice with outline, zoomed overlay, colour bar) as PNGs."""
    ct = CtSlice(pixels=saved.pixels, is_hu=saved.is_hu, spacing_mm=saved.spacing_mm, source_kind=saved.source_kind)
    display = display_image(ct, saved.display_level, saved.display_width)
    grey = np.repeat(display[..., None], 3, axis=2) if display.ndim == 2 else display
    whole = draw_outline(grey.astype(np.uint8), saved.mask, colour=(0, 255, 0))
    overlay = draw_outline(jet_overlay(display, saved.pmap, saved.mask, 0.45), saved.mask)
    r0, c0, r1, c1 = roi_crop_box(saved.mask)
    return _png(whole), _png(overlay[r0:r1, c0:c1]), _png(colour_bar(200, 18))


def case_report_pdf(saved: Any) -> bytes:
    """The PDF of a :class:`core.cases.SavedCase` (its latest analysis)."""
    summary, latest = saved.summary, saved.summary.latest
    styles = getSampleStyleSheet()
    body, small = styles["BodyText"], styles["Italic"]
    story: list[Any] = [
        Paragraph("Early recurrence of intrahepatic cholangiocarcinoma: case report", styles["Title"]),
        Paragraph(f"<b>{RESEARCH_NOTICE}</b>", body),
        Paragraph(
            f"Case key {summary.case_key} (pseudonym) · saved {summary.created_at.strftime('%Y-%m-%d %H:%M')} UTC",
            body,
        ),
    ]
    if latest.weights_warning:
        story.append(Paragraph(f"<b>Model warning:</b> {escape(latest.weights_warning)}", body))
    whole, overlay, bar = _images(saved)
    story += [
        Spacer(1, 4 * mm),
        Table(
            [[Image(whole, 70 * mm, 70 * mm), Image(overlay, 70 * mm, 70 * mm), Image(bar, 5 * mm, 55 * mm)]],
            colWidths=[75 * mm, 75 * mm, 10 * mm],
        ),
        Paragraph(
            "Left: the slice with the outline. Right: per-patch probability of early recurrence (OpenCV COLORMAP_JET, "
            "0 blue to 1 red), overlapping patches averaged.",
            small,
        ),
        Spacer(1, 3 * mm),
    ]
    measured = measure_outline(saved.mask, saved.spacing_mm)
    outline = (
        f"{measured.area_mm2:,.0f} mm², largest diameter {measured.max_diameter_mm:.1f} mm"
        if measured.area_mm2 is not None
        else f"{measured.area_px:,} px² (no pixel spacing)"
    )
    dl = latest.dl_risk
    clinical = latest.clinical_risk
    rows = [
        ["Outline", outline + f", {measured.regions} region(s)"],
        [
            "Deep learning (ResNet50 patches)",
            f"{dl.probability:.0%} mean patch probability (uncalibrated) over {dl.n_patches:,} patches",
        ],
        [
            f"Clinical model (UICC {summary.n_category})" if clinical else "Clinical model (N category unknown)",
            f"{clinical.probability:.0%} (95% CI {clinical.ci_low:.0%}–{clinical.ci_high:.0%})"
            if clinical
            else "not available (N category unknown)",
        ],
        [
            "Clinical inputs",
            f"N {summary.n_category} · T {summary.t_category or 'not entered'} · size "
            + (f"{summary.tumour_size_mm:g} mm" if summary.tumour_size_mm else "not entered"),
        ],
        ["Outcome", summary.outcome.describe() if summary.outcome else "not recorded"],
        ["Model", f"{latest.model_name}; trained on: {latest.training_data}; sha256 {latest.model_sha256[:16]}…"],
    ]
    uncertainty = latest.uncertainty or {}
    headline = spread_headline(uncertainty.get("analysis", {}).get("spread"))
    if headline:
        rows.insert(2, ["Spread", headline])
    table = Table(
        [[Paragraph(escape(a), body), Paragraph(escape(b), body)] for a, b in rows], colWidths=[45 * mm, 125 * mm]
    )
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story.append(table)
    sensitivity = uncertainty.get("sensitivity")
    if sensitivity:
        cells = sensitivity_table(sensitivity)
        header = list(cells[0])
        grid = Table([header] + [[row[h] for h in header] for row in cells])
        grid.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey), ("FONTSIZE", (0, 0), (-1, -1), 8)]))
        story += [Spacer(1, 3 * mm), Paragraph("<b>Outline sensitivity</b>", body), grid]
    story += [
        Spacer(1, 3 * mm),
        Paragraph(
            "The deep-learning number ranks cases; it is not a calibrated risk. Clinical model: "
            f"{escape(latest.clinical_model)} (the paper: Wakiya et al., Sci Rep 2022).",
            small,
        ),
    ]
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, title=f"Case {summary.case_key}", author="iCCA dashboard").build(story)
    return buffer.getvalue()
