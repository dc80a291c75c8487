"""The README quotes figures the code computes; they must not drift apart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from core import figures

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_figures_are_what_the_code_computes() -> None:
    text = README.read_text()
    start, end = text.index(figures.START), text.index(figures.END) + len(figures.END)
    assert text[start:end] == figures.render(), "run `python -m core figures --write README.md`"


def test_documented_50_mm_tumour_patch_count_is_what_geometry_predicts() -> None:
    """Patch centres tile the disk shrunk by the coverage rule's margin: about π·25² / 4² ≈ 123 patches."""
    expected = math.pi * 25.0**2 / 4.0**2
    assert abs(figures.documented_tumour_patches() - expected) / expected < 0.10


def test_readme_prose_does_not_quote_stale_figures() -> None:
    """Numbers a first release wrote by hand and the code no longer gives."""
    text = README.read_text()
    for stale in ("17–52", "119 at 0.7", "115 patches", "(115 patches"):
        assert stale not in text


def test_the_readme_shows_the_phantom_beside_a_real_ct() -> None:
    """The committed picture is what the code draws now (redraw: `python -m core figures --picture …`)."""
    import cv2

    picture = figures.phantom_picture()
    assert picture.shape == (figures.PANEL_PX + 28, 3 * figures.PANEL_PX, 3)
    assert "(docs/phantom_beside_ct_small.png)" in README.read_text()
    committed = cv2.imread(str(README.parent / "docs" / "phantom_beside_ct_small.png"))
    assert committed is not None and committed.shape == picture.shape
    # decoded pixels, not bytes: PNG encoders may differ; a phantom or caption change moves far more than 1 level
    assert float(np.abs(committed.astype(np.int16) - picture.astype(np.int16)).mean()) < 1.0
    green = (picture[..., 1] > 200) & (picture[..., 0] < 80) & (picture[..., 2] < 80)
    assert green[:, : figures.PANEL_PX].sum() > 100  # the tumour's outline is drawn on the whole slice
