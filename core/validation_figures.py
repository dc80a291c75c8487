"""Plotly figures of a local validation (:mod:`core.validation`): ROC, calibration, decision curves."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from core.validation import DCA_THRESHOLDS, LocalValidation, ModelValidation

# legends below the plot: inside it they cover the curves
_LAYOUT = {
    "height": 440,
    "margin": {"l": 50, "r": 10, "t": 40, "b": 10},
    "legend": {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
}
_REFERENCE = {"dash": "dot", "color": "grey"}
COLOURS = {"ResNet50 (mean patch probability)": "#e45756", "N-category logistic regression": "#4c78a8"}


def _models(result: LocalValidation) -> list[ModelValidation]:
    return [m for m in (result.dl, result.clinical) if m is not None]


def _line(model: ModelValidation) -> dict[str, str | None]:
    return {"color": COLOURS.get(model.name)}


def roc_figure(result: LocalValidation) -> go.Figure:
    """ROC curves of both models on the same patients, AUC with its DeLong CI in the legend."""
    fig = go.Figure()
    for model in _models(result):
        auc = model.auc
        name = f"{model.name}: AUC {auc.auc:.2f} ({auc.ci_low:.2f}–{auc.ci_high:.2f})"
        fig.add_trace(go.Scatter(x=model.roc_fpr, y=model.roc_tpr, mode="lines", line=_line(model), name=name))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=_REFERENCE, name="chance"))
    fig.update_layout(
        title=f"ROC, {result.n} patients ({result.events} with early recurrence)",
        xaxis_title="1 − specificity",
        yaxis_title="sensitivity",
        **_LAYOUT,
    )
    return fig


def calibration_figure(result: LocalValidation) -> go.Figure:
    """Observed rate against predicted probability: quantile bins (markers) and a kernel-smoothed line."""
    fig = go.Figure()
    for model in _models(result):
        c = model.calibration
        fig.add_trace(
            go.Scatter(
                x=[b[0] for b in c.bins],
                y=[b[1] for b in c.bins],
                mode="markers",
                marker={**_line(model), "size": 9},
                name=f"{model.name}: bins (Brier {c.brier:.3f})",
                text=[f"{b[2]} patients" for b in c.bins],
            )
        )
        fig.add_trace(
            go.Scatter(x=c.smooth_x, y=c.smooth_y, mode="lines", line=_line(model), name=f"{model.name}: smoothed")
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=_REFERENCE, name="ideal"))
    fig.update_layout(
        title="Calibration", xaxis_title="predicted probability", yaxis_title="observed early recurrence", **_LAYOUT
    )
    return fig


def decision_curve_figure(result: LocalValidation) -> go.Figure:
    """Net benefit of each model, of treating everyone and of treating no one, across thresholds."""
    fig = go.Figure()
    for model in _models(result):
        fig.add_trace(
            go.Scatter(x=DCA_THRESHOLDS, y=model.net_benefit, mode="lines", line=_line(model), name=model.name)
        )
    fig.add_trace(
        go.Scatter(x=DCA_THRESHOLDS, y=result.treat_all, mode="lines", line={"color": "grey"}, name="treat all")
    )
    none = np.zeros(len(DCA_THRESHOLDS))
    fig.add_trace(
        go.Scatter(x=DCA_THRESHOLDS, y=none, mode="lines", line={"color": "grey", "dash": "dash"}, name="treat none")
    )
    floor = min(-0.05, min(float(np.min(m.net_benefit)) for m in _models(result)) - 0.02)
    fig.update_layout(
        title="Decision curve",
        xaxis_title="threshold probability",
        yaxis_title="net benefit",
        yaxis_range=[floor, max(0.1, result.events / result.n + 0.05)],
        **_LAYOUT,
    )
    return fig
