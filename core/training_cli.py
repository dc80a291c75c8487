"""Sub-commands for cohorts and training (filled in by the training pipeline)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the cohort and training sub-commands."""
