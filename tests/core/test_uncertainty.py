"""Outline sensitivity (erode / dilate by mm, through the cache) and the fold spread."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import NotCalibratedError
from core.imaging import CtSlice, model_grey
from core.lattice import cut_cells, plan_lattice
from core.patch_cache import PatchCache
from core.preprocess import PreprocessConfig
from core.uncertainty import (
    OffsetRisk,
    crosses_threshold,
    ensemble_spread,
    offset_outline,
    outline_sensitivity,
    sensitivity_table,
    spread_headline,
    spread_sentence,
)
from models.checkpoint import LoadedModel

CFG = PreprocessConfig(target_spacing_mm=0.5, patch_px=8, stride_px=4, input_px=16)
SPACING = (0.5, 0.5)
CENTRE = (60.0, 60.0)


def _disk(radius_mm: float, spacing: tuple[float, float] = SPACING, shape: tuple[int, int] = (120, 120)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    return ((yy - CENTRE[0]) * spacing[0]) ** 2 + ((xx - CENTRE[1]) * spacing[1]) ** 2 <= radius_mm**2


def _radial_slice() -> CtSlice:
    """Grey rises with the distance from the tumour's centre: rim patches are brighter than core ones."""
    yy, xx = np.mgrid[0:120, 0:120] + 0.5
    distance_mm = np.hypot((yy - CENTRE[0]) * SPACING[0], (xx - CENTRE[1]) * SPACING[1])
    grey = np.clip(distance_mm / 30.0, 0.0, 1.0)
    hu = CFG.window_level_hu - CFG.window_width_hu / 2 + grey * CFG.window_width_hu
    return CtSlice(pixels=hu.astype(np.float32), is_hu=True, spacing_mm=SPACING, source_kind="dicom")


class Brightness:
    """P(patch) = its mean grey + ``bias``: a predictor whose answer depends on where the patch lies."""

    def __init__(self, bias: float) -> None:
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = ((x[:, 0] * CFG.std + CFG.mean).mean(dim=(1, 2)) + self.bias).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def _model(bias: float, cache_id: str) -> LoadedModel:
    return LoadedModel(Brightness(bias), CFG, {}, "", Path(), cache_id=cache_id)


def _expected_risks(ct: CtSlice, mask: np.ndarray, offsets: list[float]) -> dict[float, float]:
    """Mean grey of each offset outline's patches, straight from the lattice cutter (no network, no cache)."""
    grey = model_grey(ct, CFG)
    out = {}
    for offset in offsets:
        cells = plan_lattice(offset_outline(mask, SPACING, offset), SPACING, CFG).cells
        out[offset] = float(cut_cells(grey, SPACING, CFG, cells).reshape(len(cells), -1).mean() / 255.0)
    return out


def test_offsets_are_disks_in_millimetres() -> None:
    mask = _disk(10.0)
    pixel = SPACING[0] * SPACING[1]
    for offset, radius in ((1.0, 11.0), (2.0, 12.0), (-1.0, 9.0), (-2.0, 8.0)):
        area = offset_outline(mask, SPACING, offset).sum() * pixel
        assert area == pytest.approx(np.pi * radius**2, rel=0.04), offset
    assert np.array_equal(offset_outline(mask, SPACING, 0.0), mask)


def test_anisotropic_pixels_still_move_the_outline_by_millimetres() -> None:
    spacing = (0.5, 1.0)  # rows 0.5 mm, columns 1 mm
    mask = _disk(10.0, spacing)
    grown = offset_outline(mask, spacing, 2.0)
    rows, cols = np.nonzero(mask)
    grown_rows, grown_cols = np.nonzero(grown)
    height_mm = (grown_rows.max() - grown_rows.min() - (rows.max() - rows.min())) * spacing[0]
    width_mm = (grown_cols.max() - grown_cols.min() - (cols.max() - cols.min())) * spacing[1]
    assert height_mm == pytest.approx(4.0, abs=1.0) and width_mm == pytest.approx(4.0, abs=2.0)


def test_risk_for_each_offset_is_known_and_the_warning_flags_a_crossing() -> None:
    ct, mask = _radial_slice(), _disk(12.0)
    offsets = [-2.0, -1.0, 0.0, 1.0, 2.0]
    expected = _expected_risks(ct, mask, offsets)
    assert all(expected[a] < expected[b] for a, b in itertools.pairwise(offsets))  # rim is brighter
    # choose the bias so that the threshold 0.5 falls between the outline drawn and 1 mm wider
    bias = 0.5 - (expected[0.0] + expected[1.0]) / 2
    result = outline_sensitivity(ct, mask, _model(bias, "crossing"), cache=PatchCache())
    got = {r.offset_mm: r.risk for r in result.rows}
    for offset in offsets:
        assert got[offset] == pytest.approx(expected[offset] + bias, abs=2e-3), offset
    assert [r.n_patches for r in result.rows] == [
        len(plan_lattice(offset_outline(mask, SPACING, o), SPACING, CFG)) for o in offsets
    ]
    assert result.base.risk < 0.5 <= got[1.0]
    assert result.crosses_within_1mm and result.crosses_within_2mm and "1 mm" in result.warning
    far = outline_sensitivity(ct, mask, _model(-0.4, "far"), cache=PatchCache())
    assert not far.crosses_within_1mm and far.warning is None


def test_sensitivity_reuses_the_analysis_patches() -> None:
    """Eroded outlines need no new patch; dilated ones only their rim."""
    from core.analysis import analyze_case

    ct, mask, cache = _radial_slice(), _disk(12.0), PatchCache()
    model = _model(0.0, "reuse")
    analysis = analyze_case(ct, mask, model, cache=cache)
    result = outline_sensitivity(ct, mask, model, cache=cache)
    widest = max(r.n_patches for r in result.rows)
    assert result.reused == analysis.dl_risk.n_patches
    assert result.computed == widest - analysis.dl_risk.n_patches  # the +2 mm outline's new cells only
    assert result.base.risk == pytest.approx(analysis.dl_risk.probability, abs=1e-12)


def test_an_outline_that_vanishes_is_reported_not_a_crash() -> None:
    ct, small = _radial_slice(), _disk(3.0)  # a 6 mm outline; 4 mm patches
    result = outline_sensitivity(ct, small, _model(0.0, "small"), cache=None)
    rows = {r.offset_mm: r for r in result.rows}
    assert rows[0.0].risk is not None
    assert rows[-2.0].risk is None and rows[-2.0].n_patches == 0 and rows[-2.0].note
    assert "tighter" in rows[-2.0].note
    assert json.loads(json.dumps(result.to_dict()))["rows"][0]["risk"] is None
    tiny = _disk(1.5)
    assert not offset_outline(tiny, SPACING, -2.0).any()


def test_sensitivity_needs_a_pixel_spacing() -> None:
    ct = _radial_slice()
    native = PreprocessConfig(target_spacing_mm=None, patch_px=8, stride_px=4, input_px=16)
    model = LoadedModel(Brightness(0.0), native, {}, "", Path())
    no_spacing = CtSlice(pixels=ct.pixels, is_hu=True, spacing_mm=None, source_kind="dicom")
    with pytest.raises(NotCalibratedError, match="pixel spacing"):
        outline_sensitivity(no_spacing, _disk(12.0), model)


def test_crossing_rule() -> None:
    def rows(*risks: float | None) -> list[OffsetRisk]:
        return [OffsetRisk(o, r, 1, (), 1.0) for o, r in zip((-2.0, -1.0, 0.0, 1.0, 2.0), risks, strict=True)]

    assert crosses_threshold(rows(0.4, 0.45, 0.49, 0.51, 0.6), 1.0)
    assert not crosses_threshold(rows(0.4, 0.45, 0.47, 0.49, 0.6), 1.0)
    assert crosses_threshold(rows(0.4, 0.45, 0.47, 0.49, 0.6), 2.0)
    assert not crosses_threshold(rows(None, None, 0.6, 0.7, 0.8), 1.0)


def test_spread_from_member_probabilities() -> None:
    probs = np.array([[0.1, 0.3, 0.8], [0.3, 0.5, 0.8]])
    spread = ensemble_spread(probs, ["fold 1", "fold 2", "fold 3"])
    assert spread.risks == pytest.approx((0.2, 0.4, 0.8)) and spread.mean == pytest.approx(1.4 / 3)
    assert (spread.low, spread.high) == pytest.approx((0.2, 0.8)) and spread.members_disagree
    assert spread.sd == pytest.approx(np.std([0.2, 0.4, 0.8], ddof=1))
    with pytest.raises(ValueError):
        ensemble_spread(probs, ["fold 1"])


def test_spread_sentence_reads_the_saved_form_and_names_a_split_decision() -> None:
    spread = ensemble_spread(np.array([[0.2, 0.45, 0.7]]), ["fold 1", "fold 2", "fold 3"]).to_dict()
    sentence = spread_sentence(json.loads(json.dumps(spread)))
    assert sentence.startswith("Across its 3 fold models: 20%–70% (min–max, SD 25 percentage points).")
    assert "not a confidence interval" in sentence and "both sides of the 0.5 decision threshold" in sentence
    agree = ensemble_spread(np.array([[0.2, 0.3]]), ["fold 1", "fold 2"]).to_dict()
    assert "both sides" not in spread_sentence(agree)
    assert spread_sentence(ensemble_spread(np.array([[0.4]]), ["model"]).to_dict()) is None
    members = spread_sentence(ensemble_spread(np.array([[0.2, 0.3]]), ["member 1", "member 2"]).to_dict())
    assert members.startswith("Across its 2 member networks: 20%–30%") and "cohort" not in members
    assert spread_sentence(None) is None


def test_sensitivity_table_has_units_and_says_why_a_row_has_no_risk() -> None:
    ct, small = _radial_slice(), _disk(3.0)
    saved = json.loads(json.dumps(outline_sensitivity(ct, small, _model(0.0, "table"), cache=None).to_dict()))
    table = sensitivity_table(saved)
    assert [row["outline"] for row in table] == ["2 mm tighter", "1 mm tighter", "as drawn", "1 mm wider", "2 mm wider"]
    by_outline = {row["outline"]: row for row in table}
    drawn = next(r for r in saved["rows"] if r["offset_mm"] == 0)
    assert by_outline["as drawn"]["DL mean patch prob."] == f"{drawn['risk']:.0%}"
    assert by_outline["as drawn"]["patches"] == f"{drawn['n_patches']:,}"
    assert by_outline["as drawn"]["area (mm²)"] == f"{drawn['area_mm2']:,.0f}"
    assert by_outline["2 mm tighter"]["patches"] == "—"
    assert "tighter" in by_outline["2 mm tighter"]["DL mean patch prob."]  # the note, not a blank
    assert by_outline["as drawn"]["networks (min–max)"] == "—"  # one network: no range to show


def test_spread_headline_is_short_and_keeps_the_split_decision() -> None:
    split = ensemble_spread(np.array([[0.2, 0.45, 0.7]]), ["fold 1", "fold 2", "fold 3"]).to_dict()
    assert spread_headline(split) == (
        "Across its 3 fold models: 20%–70% (min–max); not a confidence interval. "
        "They fall on both sides of the 0.5 decision threshold."
    )
    assert spread_headline(ensemble_spread(np.array([[0.4]]), ["model"]).to_dict()) is None
