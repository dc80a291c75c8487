"""One definition of "trained on patients", read from the card, distrusting first-release defaults."""

from __future__ import annotations

import pytest

from core.provenance import (
    CARD_VERSION,
    PERMUTED_CONTROL,
    REAL_PATIENTS,
    SYNTHETIC_PHANTOMS,
    UNKNOWN,
    UNTRAINED,
    training_data_of,
    weights_warning,
)
from models.checkpoint import make_card


@pytest.mark.parametrize(
    ("card", "kind"),
    [
        ({"training_data": REAL_PATIENTS, "card_version": CARD_VERSION}, REAL_PATIENTS),
        # the first release wrote "real patients" whenever a run was not flagged synthetic
        ({"training_data": REAL_PATIENTS}, UNKNOWN),
        ({"training_data": SYNTHETIC_PHANTOMS}, SYNTHETIC_PHANTOMS),
        ({"training_data": "probably patients", "card_version": CARD_VERSION}, UNKNOWN),
        ({}, UNKNOWN),
    ],
)
def test_training_data_of_a_card(card: dict, kind: str) -> None:
    assert training_data_of(card) == kind


def test_only_patients_go_without_a_warning() -> None:
    assert weights_warning(REAL_PATIENTS) is None
    for kind in (SYNTHETIC_PHANTOMS, UNTRAINED, PERMUTED_CONTROL, UNKNOWN, None, "anything"):
        warning = weights_warning(kind)
        assert warning and warning.endswith(".")


def test_cards_made_now_are_trusted() -> None:
    card = make_card("m", "trained on 41 patients of the local cohort", REAL_PATIENTS)
    assert card["card_version"] == CARD_VERSION and training_data_of(card) == REAL_PATIENTS
