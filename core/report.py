"""``report.md`` and ROC curves (plotly HTML + PNG) from a cross-validation summary.

The report leads with the pooled out-of-fold patient-level AUC and its DeLong 95% CI,
then the deep-learning vs clinical comparison on the same patients, then the fold
tables (mean ± SD), and says for each figure which patients it rests on. A
permuted-label run is titled and flagged as a control.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core.metrics import METRIC_NAMES, roc_curve
from core.provenance import RESEARCH_NOTICE, weights_warning

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
CONTROL_TITLE = "Permuted-label control (not a model): cross-validation report"


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """Write ``report.md``, ``roc.html`` and ``roc.png`` under ``out``."""
    (out / "report.md").write_text(render_markdown(summary))
    write_roc(out, summary)


def auc_with_ci(auc: float, ci: list[float]) -> str:
    """ "0.812 (95% CI 0.671–0.953)", or "—" when undefined."""
    if auc is None or math.isnan(auc):
        return "—"
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return f"{_num(auc)} (95% CI not defined)"
    return f"{_num(auc)} (95% CI {_num(ci[0])}–{_num(ci[1])})"


def width_reason(n: int, events: int) -> str:
    """Why the CI is wide, in one sentence."""
    return (
        f"With only {n} patients ({events} events, {n - events} without) the interval is wide: "
        "read the AUC as lying anywhere inside it, not as the point value."
    )


def fitting_clause(cap: int | None, per_epoch: int) -> str:
    """What the networks were fitted on, for the report's cohort line.

    ``per_epoch`` counts all patients together; each fold network draws from its own training
    patients only, about (K − 1) / K of them.
    """
    if cap is None:
        return "every patch, every epoch"
    return (
        f"fitting drew at most {cap} per patient afresh each epoch, {per_epoch:,} over all patients together, "
        "of which each fold network used its training patients' share"
    )


def render_markdown(summary: dict[str, Any]) -> str:
    cohort, cfg, covers = summary["cohort"], summary["config"], summary["covers"]
    oof = summary["out_of_fold_patient_level"]
    control = summary.get("control")
    lines = [f"# {CONTROL_TITLE if control else 'Cross-validation report'}", ""]
    if control:
        lines += [f"**This is a {control}.**", ""]
    warning = weights_warning(summary["training_data"])
    if warning:
        lines += [f"**{warning}** {RESEARCH_NOTICE}", ""]
    everyone, same = oof["all_patients"], oof["same_patients"]
    lines += [
        "## Patient level, out of fold: the headline",
        "",
        f"ResNet50 AUC **{auc_with_ci(everyone['dl_auc'], everyone['dl_auc_ci'])}** ({oof['ci_method']}), "
        f"n = {everyone['n']} patients, {everyone['events']} with early recurrence: "
        f"{covers['out_of_fold_patient_level']}.",
        "",
        width_reason(everyone["n"], everyone["events"]),
        "",
        "## Patient level, deep learning vs clinical model on the same patients",
        "",
        f"Patients: {covers['same_patients']}; n = {same['n']}, {same['events']} with early recurrence "
        f"({everyone['n'] - same['n']} with unknown N left out). The N-category logistic regression was refitted "
        "on each training fold.",
        "",
        "| Model | AUC (95% CI, " + oof["ci_method"] + ") | n | Events |",
        "|---|---|---|---|",
        "| ResNet50 (the dashboard's case risk) | "
        + f"{auc_with_ci(same['dl_auc'], same['dl_auc_ci'])} | {same['n']} | {same['events']} |",
        f"| N-category logistic regression | {auc_with_ci(same['clinical_auc'], same['clinical_auc_ci'])} | "
        f"{same['n']} | {same['events']} |",
        "",
        "## Run",
        "",
        f"Cohort: {cohort['patients']} patients ({cohort['early_recurrence']} with early recurrence, "
        f"{cohort['known_n_category']} with known N), {cohort['patches']:,} patches in all "
        f"({fitting_clause(cfg['max_patches_per_patient'], cohort['training_patches_per_epoch'])}). "
        f"Data: {cohort['data_source']}"
        + (" **with permuted labels (control run)**" if cohort["permuted_labels"] else "")
        + f"; model card training data: {summary['training_data']}.",
        f"{cfg['folds']}-fold cross-validation split **by patient**, stratified by label. "
        f"Training: ResNet50 from scratch, {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']:g}, "
        f"seed {cfg['seed']}; network input {summary['preprocess']['input_px']} px (the paper: 224).",
        f"Aggregation: {summary['patient_rule']}.",
        "",
        "Fold tables follow (mean ± SD over folds; each fold rests on a few patients, so they vary more "
        "than the pooled figure above).",
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
            lines += [
                f"## {title}: {table}",
                "",
                f"Patients: {covers[split]}.",
                "",
                *_fold_table(summary, level, split),
                "",
            ]
    lines += [
        "## Per-patient patch accuracy (Table 4 analysis, validation folds)",
        "",
        f"Patients: {covers['table4']}. First quartile of patch accuracy: "
        f"{_pct(summary['table4']['first_quartile_patch_accuracy'])} %; patients at or below it are flagged.",
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
        f"Training throughput: {', '.join(_throughput(v) for v in t['train_patches_per_s_per_fold'])} patches/s "
        f"per fold on {t['device']} × {t['processes']} process(es).",
        "",
    ]
    return "\n".join(lines)


def _throughput(patches_per_s: float | None) -> str:
    """One fold's training patches/s; a fold resumed after its last epoch was not timed."""
    return "— (resumed after training, not timed)" if patches_per_s is None else f"{patches_per_s:.1f}"


def card_metric_rows(cv_metrics: dict[str, Any]) -> list[dict[str, str]]:
    """Validation mean ± SD per metric at patient and patch level, for the model card page.

    These come second: the page leads with the pooled out-of-fold AUC (:mod:`core.modelcard`).
    """
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
    """Out-of-fold patient-level ROC of the DL model against the N-category model, HTML and PNG.

    Curves: the ResNet50 on all patients; where some N categories are unknown, the ResNet50
    again on the patients with known N; the N-category model on those same patients. Each
    legend entry gives its n.
    """
    import plotly.graph_objects as go

    patients = summary["table4"]["patients"]
    oof = summary["out_of_fold_patient_level"]
    everyone, same = oof["all_patients"], oof["same_patients"]
    known = [p for p in patients if p["clinical_probability"] is not None]
    curves = [("ResNet50, all", patients, "dl_probability", everyone["dl_auc"], everyone["n"])]
    if known and len(known) < len(patients):
        curves.append(("ResNet50, known N", known, "dl_probability", same["dl_auc"], same["n"]))
    if known:
        curves.append(("N category LR, known N", known, "clinical_probability", same["clinical_auc"], same["n"]))
    fig = go.Figure()
    for name, rows, key, auc, n in curves:
        fpr, tpr = roc_curve(np.array([p["label"] for p in rows]), np.array([p[key] for p in rows]))
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines+markers", name=f"{name} (n = {n}, AUC {_num(auc)})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    control = " — PERMUTED-LABEL CONTROL" if summary.get("control") else ""
    fig.update_layout(
        title=f"Patient-level ROC, out of fold{control}",
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
