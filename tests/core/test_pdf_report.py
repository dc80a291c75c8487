"""The case PDF: a real PDF whose text holds both risks, the model, the outcome and the notice."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from pypdf import PdfReader
from sqlalchemy.orm import Session

from core import db
from core.cases import load_saved_case
from core.outcomes import FollowUp
from core.pdf_report import case_report_pdf
from tests.core.test_db import _new_case


def _text(pdf: bytes) -> str:
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages)


def test_case_report_pdf_states_both_risks_the_model_the_outcome_and_the_notice(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    db.migrate(engine)
    new_case, analysis = _new_case("P-pdf")
    spread = {
        "names": ["fold 1", "fold 2"],
        "risks": [0.6, 0.8],
        "low": 0.6,
        "high": 0.8,
        "sd": 0.14,
        "threshold": 0.5,
        "members_disagree": False,
    }
    with Session(engine) as session:
        case = db.add_case(session, new_case, replace(analysis, uncertainty={"analysis": {"spread": spread}}))
        session.flush()
        db.record_outcome(session, case.id, FollowUp(days_to_recurrence=150, days_followed=None))
        session.commit()
        saved = load_saved_case(session, case.id)
    engine.dispose()
    pdf = case_report_pdf(saved)
    assert pdf.startswith(b"%PDF")
    text = _text(pdf)
    for expected in (
        "Case key P-pdf (pseudonym)",
        "Research use only",
        "70% mean patch probability (uncalibrated) over 2 patches",
        "85% (95% CI 50%–96%)",
        "Across its 2 fold models: 60%–80% (min–max)",
        "Early recurrence: recurrence 150 days after surgery.",
        "Untrained (random) weights",
        "sha256 ffffffffffffffff",
        "mm²",
    ):
        assert expected in text, expected
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1
    assert np.frombuffer(pdf, dtype=np.uint8).size > 5_000  # the two images are in it
