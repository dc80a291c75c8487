"""Read a checkpoint's card for display: the patient-level cross-validated AUC leads.

Cards written by the training pipeline carry ``cv_metrics.out_of_fold_patient_level`` with
``all_patients`` (every patient's out-of-fold prediction, the dashboard's rule) and
``same_patients`` (those with a known N category, where the DL and clinical models are
compared). Cards of the first release had only two bare AUCs; they are shown without a CI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.provenance import SYNTHETIC_PHANTOMS, training_data_of


@dataclass(frozen=True)
class PatientAuc:
    """A pooled out-of-fold patient-level AUC with its 95% CI, and the patients it covers."""

    auc: float
    ci: tuple[float, float] | None
    n: int | None
    events: int | None

    def describe(self, noun: str = "patients") -> str:
        """E.g. "AUC 0.93 (95% CI 0.85–1.00; 41 patients, 20 with early recurrence)"."""
        parts = []
        if self.ci is not None:
            parts.append(f"95% CI {self.ci[0]:.2f}–{self.ci[1]:.2f}")
        if self.n is not None:
            parts.append(
                f"{self.n} {noun}" + (f", {self.events} with early recurrence" if self.events is not None else "")
            )
        return f"AUC {self.auc:.2f}" + (f" ({'; '.join(parts)})" if parts else "")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _auc_from(block: dict[str, Any], auc_key: str, ci_key: str) -> PatientAuc | None:
    auc = _finite(block.get(auc_key))
    if auc is None:
        return None
    ci_raw = block.get(ci_key)
    ci = None
    if isinstance(ci_raw, list | tuple) and len(ci_raw) == 2:
        low, high = _finite(ci_raw[0]), _finite(ci_raw[1])
        ci = (low, high) if low is not None and high is not None else None
    n, events = block.get("n"), block.get("events")
    return PatientAuc(auc, ci, int(n) if n is not None else None, int(events) if events is not None else None)


def _pooled(card: dict[str, Any]) -> dict[str, Any]:
    metrics = card.get("cv_metrics") or {}
    pooled = metrics.get("out_of_fold_patient_level") or {}
    return pooled if isinstance(pooled, dict) else {}


def patient_level_auc(card: dict[str, Any]) -> PatientAuc | None:
    """The deep-learning model's pooled out-of-fold AUC over all patients, or ``None`` if never validated."""
    pooled = _pooled(card)
    if isinstance(pooled.get("all_patients"), dict):
        return _auc_from(pooled["all_patients"], "dl_auc", "dl_auc_ci")
    return _auc_from(pooled, "dl_auc", "dl_auc_ci")  # first-release cards: a bare AUC


def same_patients_comparison(card: dict[str, Any]) -> tuple[PatientAuc, PatientAuc] | None:
    """(deep learning, clinical) AUCs on the same patients (known N category), or ``None``."""
    block = _pooled(card).get("same_patients")
    if not isinstance(block, dict):
        return None
    dl = _auc_from(block, "dl_auc", "dl_auc_ci")
    clinical = _auc_from(block, "clinical_auc", "clinical_auc_ci")
    return (dl, clinical) if dl is not None and clinical is not None else None


def cohort_noun(card: dict[str, Any]) -> str:
    """What the cross-validated subjects were: "patients", or "phantom patients" for synthetic data."""
    return "phantom patients" if training_data_of(card) == SYNTHETIC_PHANTOMS else "patients"


def performance_sentence(card: dict[str, Any]) -> str:
    """How the model separated patients in cross-validation, in one sentence for beside its risk."""
    auc = patient_level_auc(card)
    if auc is None:
        return "This model has no cross-validated patient-level performance on its card."
    who = cohort_noun(card)
    if auc.ci is None:  # a first-release card: another scoring rule, no interval
        return (
            f"An earlier version of this tool reported a cross-validated AUC of {auc.auc:.2f} for it, with another "
            "scoring rule and no confidence interval; retrain it to get a current figure."
        )
    sentence = f"Cross-validated, one out-of-fold prediction per patient: {auc.describe(who)}."
    if card.get("ensemble"):  # the deployed ensemble has seen every patient: it has no held-out figure
        sentence += (
            " Each patient was scored by the one fold network that had not seen them; the deployed ensemble of "
            "the fold networks has no held-out figure of its own."
        )
    return sentence
