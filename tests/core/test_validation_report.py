"""The validation PDF: a real PDF whose text (read by pdftotext, as a reader's tools would) holds the page's figures."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime

import numpy as np
import pytest

from core.validation import ScoredPatients, format_auc, validate
from core.validation_report import validation_report_pdf


def pdftotext(pdf: bytes) -> str:
    """The PDF's text by poppler's pdftotext (installed by `make test`), whitespace collapsed."""
    tool = shutil.which("pdftotext")
    assert tool, "pdftotext is missing: `make browser` installs poppler-utils"
    out = subprocess.run([tool, "-layout", "-", "-"], input=pdf, capture_output=True, check=True).stdout
    return " ".join(out.decode("utf-8").split())


def _cohort(with_n: bool = True) -> ScoredPatients:
    rng = np.random.default_rng(5)
    labels = tuple(bool(v) for v in rng.random(30) < 0.4)
    dl = tuple(float(np.clip(0.5 + (0.25 if y else -0.25) + rng.normal(0, 0.2), 0.01, 0.99)) for y in labels)
    clinical = tuple((0.66 if rng.random() < (0.7 if y else 0.2) else 0.14) if with_n else None for y in labels)
    return ScoredPatients("ab" * 32, "ResNet50 demo model", labels, dl, clinical, 3, "trained on synthetic phantoms")


def test_validation_pdf_holds_both_models_figures_the_test_and_the_notice() -> None:
    cohort = _cohort()
    result = validate(cohort.labels, cohort.dl, cohort.clinical)
    pdf = validation_report_pdf(cohort, result, generated_at=datetime(2026, 12, 2, 9, 30, tzinfo=UTC))
    assert pdf.startswith(b"%PDF")
    text = pdftotext(pdf)
    assert "local validation report" in text and "Research use only" in text
    assert "2026-12-02 09:30 UTC" in text and "abababababababab" in text
    assert f"{result.n} patients, {result.events} with early recurrence" in text
    assert "3 case(s) of this model left out" in text and "trained on synthetic phantoms" in text
    for model in (result.dl, result.clinical):
        assert model is not None
        assert format_auc(model.auc) in text  # the page's own formatting: the same numbers
        assert f"{model.calibration.brier:.3f}" in text
    assert result.difference is not None and f"{result.difference.difference:+.3f}" in text
    assert "Treat all" in text and "Treat none" in text and "Sensitivity" in text


def test_validation_pdf_without_a_clinical_comparison_says_why() -> None:
    cohort = _cohort(with_n=False)
    result = validate(cohort.labels, cohort.dl, cohort.clinical)
    text = pdftotext(validation_report_pdf(cohort, result))
    assert "The clinical model is not compared" in text
    assert "N-category logistic regression" not in text
    assert format_auc(result.dl.auc) in text


@pytest.mark.parametrize("events", [2, 9])
def test_validation_pdf_warns_with_few_events(events: int) -> None:
    labels = tuple([True] * events + [False] * 12)
    dl = tuple(np.linspace(0.2, 0.8, len(labels)).tolist())
    cohort = ScoredPatients("cd" * 32, "model", labels, dl, (None,) * len(labels), 0)
    text = pdftotext(validation_report_pdf(cohort, validate(labels, dl, cohort.clinical)))
    assert f"Only {events} patients with and 12 without early recurrence" in text
