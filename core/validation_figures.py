"""Plotly figures of a local validation (:mod:`core.validation`): ROC, calibration, decision curves."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from core.validation import DCA_THRESHOLDS, LocalValidation

_LAYOUT = {"height": 380, "margin": {"l": 50, "r": 10, "t": 40, "b": 45}, "legend": {"x": 0.4, "y": 0.05}}


def _models(result: LocalValidation) -> list:
    return [m for m in (result.dl, result.clinical) if m is not None]


def roc_figure(result: LocalValidation) -> go.Figure:
    """ROC curves of both models on the same patients, AUC with its DeLong CI in the legend."""
    fig = go.Figure()
    for model in _models(result):
        auc = model.auc
        fig.add_trace(
            go.Scatter(
                x=model.roc_fpr,
                y=model.roc_tpr,
                mode="lines",
                name=f"{model.name}: AUC {auc.auc:.2f} ({auc.ci_low:.2f}–{auc.ci_high:.2f})",
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
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
                name=f"{model.name}: bins (Brier {c.brier:.3f})",
                text=[f"{b[2]} patients" for b in c.bins],
            )
        )
        fig.add_trace(go.Scatter(x=c.smooth_x, y=c.smooth_y, mode="lines", name=f"{model.name}: smoothed"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="ideal"))
    fig.update_layout(
        title="Calibration", xaxis_title="predicted probability", yaxis_title="observed early recurrence", **_LAYOUT
    )
    return fig


def decision_curve_figure(result: LocalValidation) -> go.Figure:
    """Net benefit of each model, of treating everyone and of treating no one, across thresholds."""
    fig = go.Figure()
    for model in _models(result):
        fig.add_trace(go.Scatter(x=DCA_THRESHOLDS, y=model.net_benefit, mode="lines", name=model.name))
    fig.add_trace(go.Scatter(x=DCA_THRESHOLDS, y=result.treat_all, mode="lines", name="treat all"))
    fig.add_trace(go.Scatter(x=DCA_THRESHOLDS, y=np.zeros(len(DCA_THRESHOLDS)), mode="lines", name="treat none"))
    floor = min(-0.05, float(np.min(result.dl.net_benefit)) - 0.02)
    fig.update_layout(
        title="Decision curve",
        xaxis_title="threshold probability",
        yaxis_title="net benefit",
        yaxis_range=[floor, max(0.1, result.events / result.n + 0.05)],
        **_LAYOUT,
    )
    return fig
