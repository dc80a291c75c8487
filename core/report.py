"""``report.md`` and ROC curves (plotly HTML + PNG) from a cross-validation summary."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import METRIC_NAMES, roc_curve

log = logging.getLogger(__name__)
ROWS = {
    "sensitivity": "Sensitivity, %",
    "specificity": "Specificity, %",
    "false_negative_rate": "False negative rate, %",
    "false_positive_rate": "False positive rate, %",
    "ppv": "Positive predictive value, %",
    "npv": "Negative predictive value, %",
    "accuracy": "Accuracy, %",
    "auc": "AUC",
}


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """Write ``report.md``, ``roc.html`` and ``roc.png`` under ``out``."""
    (out / "report.md").write_text(render_markdown(summary))
    write_roc(out, summary)


def render_markdown(summary: dict[str, Any]) -> str:
    cohort, cfg = summary["cohort"], summary["config"]
    lines = [
        "# Cross-validation report",
        "",
        f"Cohort: {cohort['patients']} patients ({cohort['early_recurrence']} with early recurrence), "
        f"{cohort['patches']:,} patches. {cfg['folds']}-fold cross-validation split **by patient**, stratified by label.",
        f"Training: ResNet50 from scratch, {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']:g}, "
        f"seed {cfg['seed']}, max patches per patient {cfg['max_patches_per_patient'] or 'all'}.",
        f"Data: {cfg['training_data']}."
        + (" **Labels were permuted (control run).**" if cohort["permuted_labels"] else ""),
        f"Aggregation: {summary['patient_rule']}.",
        "",
    ]
    pooled = summary["out_of_fold_patient_level"]
    lines += [
        "## Patient level, out of fold (one prediction per patient)",
        "",
        f"- Deep learning: AUC {_num(pooled['dl']['auc'])}, accuracy {_pct(pooled['dl']['accuracy'])} % "
        f"(n = {pooled['dl']['n']}).",
        f"- N-category logistic regression (refitted on each training fold): AUC {_num(pooled['clinical_n_category']['auc'])} "
        f"(n = {pooled['clinical_patients']} with known N).",
        "",
    ]
    for level, title in (
        ("patient_level", "Patient level"),
        ("patch_level", "Patch level (patches of one patient are not independent)"),
    ):
        for split, table in (
            ("train", "training set (Table 2 layout)"),
            ("validation", "validation set (Table 3 layout)"),
        ):
            lines += [f"## {title}: {table}", "", *_fold_table(summary, level, split), ""]
    lines += [
        "## Per-patient patch accuracy (Table 4 analysis, validation folds)",
        "",
        f"First quartile of patch accuracy: {_pct(summary['table4']['first_quartile_patch_accuracy'])} %; "
        "patients at or below it are flagged.",
        "",
        "| Patient | Fold | Label | N | Size, mm | Patches | Patch accuracy, % | DL risk | ≤ Q1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(summary["table4"]["patients"], key=lambda r: r["patch_accuracy"]):
        lines.append(
            f"| {p['patient_key']} | {p['fold']} | {p['label']} | {p['n_category']} | "
            f"{p['tumour_size_mm'] if p['tumour_size_mm'] is not None else '—'} | {p['n_patches']} | "
            f"{_pct(p['patch_accuracy'])} | {p['dl_probability']:.2f} | {'yes' if p['first_quartile'] else ''} |"
        )
    t = summary["throughput"]
    lines += [
        "",
        f"Training throughput: {', '.join(f'{v:.1f}' for v in t['train_patches_per_s_per_fold'])} patches/s "
        f"per fold on {t['device']} × {t['processes']} process(es).",
        "",
    ]
    return "\n".join(lines)


def card_metric_rows(cv_metrics: dict[str, Any]) -> list[dict[str, str]]:
    """Validation mean ± SD per metric at patient and patch level, for the model card page."""
    rows = []
    for name in METRIC_NAMES:
        row = {"metric": ROWS[name]}
        for level, label in (("patient_level", "patient level"), ("patch_level", "patch level (secondary)")):
            stats = cv_metrics.get(level, {}).get("validation", {}).get(name)
            fmt = _num if name == "auc" else _pct
            row[label] = "—" if stats is None else f"{fmt(stats['mean'])} ± {fmt(stats['sd'])}"
        rows.append(row)
    return rows


def _fold_table(summary: dict[str, Any], level: str, split: str) -> list[str]:
    folds = summary["folds"]
    header = "| | " + " | ".join(f"Fold {f['fold']}" for f in folds) + " | Average | SD |"
    rows = [header, "|---" * (len(folds) + 3) + "|"]
    stats = summary["summary"][level][split]
    for name in METRIC_NAMES:
        fmt = _num if name == "auc" else _pct
        cells = [fmt(f[level][split][name]) for f in folds]
        rows.append(
            f"| {ROWS[name]} | " + " | ".join(cells) + f" | {fmt(stats[name]['mean'])} | {fmt(stats[name]['sd'])} |"
        )
    return rows


def _pct(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _num(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def write_roc(out: Path, summary: dict[str, Any]) -> None:
    """Out-of-fold patient-level ROC of the DL model against the N-category model, HTML and PNG."""
    import plotly.graph_objects as go

    patients = summary["table4"]["patients"]
    fig = go.Figure()
    labels = np.array([p["label"] for p in patients])
    fpr, tpr = roc_curve(labels, np.array([p["dl_probability"] for p in patients]))
    auc = summary["out_of_fold_patient_level"]["dl"]["auc"]
    fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines+markers", name=f"ResNet50 (AUC {_num(auc)})"))
    known = [p for p in patients if p["clinical_probability"] is not None]
    if known:
        cfpr, ctpr = roc_curve(
            np.array([p["label"] for p in known]), np.array([p["clinical_probability"] for p in known])
        )
        cauc = summary["out_of_fold_patient_level"]["clinical_n_category"]["auc"]
        fig.add_trace(go.Scatter(x=cfpr, y=ctpr, mode="lines+markers", name=f"N category LR (AUC {_num(cauc)})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    fig.update_layout(
        title="Patient-level ROC, out of fold",
        xaxis_title="1 − specificity",
        yaxis_title="Sensitivity",
        width=640,
        height=560,
        template="plotly_white",
    )
    fig.write_html(out / "roc.html", include_plotlyjs=True)
    os.environ.setdefault("BROWSER_PATH", shutil.which("chromium") or "/usr/bin/chromium")
    try:
        fig.write_image(out / "roc.png")
    except Exception as error:  # PNG export needs a browser; the HTML is the primary figure
        log.warning("roc.png not written (%s); roc.html has the same figure", type(error).__name__)
