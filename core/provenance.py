"""Where a model's weights came from: the one definition of "not trained on patients".

A checkpoint's card carries ``training_data``, set by the training run from what the
manifest said about its data (never by default). Every place that shows a risk, the
sidebar, the Analyze and Cases pages, the cross-validation report, asks this module
whether the weights come from real patients and which warning to show.
"""

from __future__ import annotations

RESEARCH_NOTICE = "Research use only — not a medical device; do not base treatment decisions on these numbers."

REAL_PATIENTS = "real patients"
SYNTHETIC_PHANTOMS = "synthetic phantoms"
UNTRAINED = "untrained"
PERMUTED_CONTROL = "permuted-label control"
UNKNOWN = "unknown"
TRAINING_DATA_KINDS = (REAL_PATIENTS, SYNTHETIC_PHANTOMS, UNTRAINED, PERMUTED_CONTROL, UNKNOWN)

# What a manifest's ``data_source`` column (or ``core train --data-source``) may say.
DATA_SOURCES = {"patients": REAL_PATIENTS, "synthetic": SYNTHETIC_PHANTOMS}

_WARNINGS = {
    SYNTHETIC_PHANTOMS: "Trained on synthetic phantoms, not on patients: its risks mean nothing clinically.",
    UNTRAINED: "Untrained (random) weights: its risks mean nothing.",
    PERMUTED_CONTROL: "A permuted-label control run: its risks are meaningless by design.",
    UNKNOWN: "Where these weights came from is not recorded: treat its risks as meaningless.",
}


# Cards from version 2 on state training_data because the data said so. The first release
# wrote "real patients" whenever training was not flagged synthetic, so on its cards that
# claim means nothing and is read as UNKNOWN.
CARD_VERSION = 2


def training_data_of(card: dict) -> str:
    """What a checkpoint card says its weights were trained on, distrusting first-release defaults."""
    stated = str(card.get("training_data", UNKNOWN))
    if stated not in TRAINING_DATA_KINDS:
        return UNKNOWN
    if stated == REAL_PATIENTS and int(card.get("card_version", 1) or 1) < CARD_VERSION:
        return UNKNOWN
    return stated


def from_patients(training_data: str | None) -> bool:
    """True only when the card says the weights were trained on real patients."""
    return training_data == REAL_PATIENTS


def weights_warning(training_data: str | None) -> str | None:
    """One sentence to show beside every risk of a model not trained on patients; ``None`` otherwise."""
    if from_patients(training_data):
        return None
    return _WARNINGS.get(str(training_data), _WARNINGS[UNKNOWN])
