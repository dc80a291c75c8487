"""analyze_case: the model runs only on what it was trained to see, and never averages NaN."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.analysis import analyze_case, outline_coverage
from core.errors import ModelOutputError, NotCalibratedError
from core.imaging import calibrate, load_slice
from core.inference import aggregate
from core.phantom import sample_case
from core.preprocess import PreprocessConfig
from core.roi import mask_from_outlines
from models.checkpoint import LoadedModel

GEOMETRY = PreprocessConfig(patch_px=64, stride_px=32, input_px=32, target_spacing_mm=0.25)


def _constant_model(probability: float) -> LoadedModel:
    """A network whose every patch gets ``probability`` (NaN allowed), with the test geometry."""

    def network(x: torch.Tensor) -> torch.Tensor:
        logit = torch.logit(torch.tensor(probability)) if not np.isnan(probability) else torch.tensor(float("nan"))
        return torch.stack([torch.zeros(len(x)), torch.full((len(x),), float(logit))], dim=1)

    return LoadedModel(network, GEOMETRY, {"training_data": "untrained"}, "0" * 64, Path("constant.pt"))


def _sample() -> tuple[bytes, np.ndarray]:
    sample = sample_case()
    return sample.dicom_bytes, mask_from_outlines([sample.outline_xy], sample.shape)


def _png_export(dicom: bytes, level: float = 60.0, width: float = 160.0) -> bytes:
    hu = load_slice(dicom).pixels
    grey = np.clip((hu - (level - width / 2)) / width * 255.0, 0, 255).round().astype(np.uint8)
    return cv2.imencode(".png", grey)[1].tobytes()


def test_the_risk_is_the_mean_patch_probability() -> None:
    dicom, mask = _sample()
    result = analyze_case(load_slice(dicom), mask, _constant_model(0.25))
    assert result.dl_risk.probability == pytest.approx(0.25, abs=1e-6)
    assert result.dl_risk.n_patches == len(result.probabilities) > 0


def test_a_png_export_without_scale_and_window_is_refused() -> None:
    dicom, mask = _sample()
    png = load_slice(_png_export(dicom), "export.png")
    with pytest.raises(NotCalibratedError, match=r"pixel spacing .* and the window"):
        analyze_case(png, mask, _constant_model(0.5))
    with pytest.raises(NotCalibratedError, match="window"):
        analyze_case(calibrate(png, spacing_mm=0.7), mask, _constant_model(0.5))


def test_a_calibrated_export_sees_the_same_patches_as_the_dicom() -> None:
    """Exported at L60/W160 and mapped back, the tumour's HU and patch grid match the DICOM's."""
    dicom, mask = _sample()
    ct = load_slice(dicom)
    export = calibrate(load_slice(_png_export(dicom), "export.png"), ct.spacing_mm[0], (60.0, 160.0))
    inside = mask & (ct.pixels > -20) & (ct.pixels < 140)  # inside the export's window: not clipped
    assert np.abs(export.pixels[inside] - ct.pixels[inside]).max() <= 160 / 255 / 2 + 1e-3  # half a grey step
    a = analyze_case(ct, mask, _constant_model(0.5))
    b = analyze_case(export, mask, _constant_model(0.5))
    np.testing.assert_array_equal(a.grid.boxes_img, b.grid.boxes_img)


def test_patches_span_the_models_millimetres() -> None:
    """What the refusal protects: on its own grid a 64-px patch of a ~0.7 mm export would span ~45 mm, not 16."""
    dicom, mask = _sample()
    scaled = analyze_case(load_slice(dicom), mask, _constant_model(0.5))
    patch_px = scaled.grid.boxes_img[0, 2] - scaled.grid.boxes_img[0, 0]
    assert patch_px * load_slice(dicom).spacing_mm[0] == pytest.approx(GEOMETRY.patch_mm, rel=0.02)


def test_nan_probabilities_are_an_error_not_a_risk() -> None:
    dicom, mask = _sample()
    with pytest.raises(ModelOutputError, match="invalid probabilities"):
        analyze_case(load_slice(dicom), mask, _constant_model(float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        aggregate(np.array([0.2, np.nan]))


def test_coverage_counts_outline_pixels_without_a_patch() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    pmap = np.full((10, 10), np.nan, np.float32)
    pmap[2:8, 2:6] = 0.4
    coverage = outline_coverage(pmap, mask, 0.5)
    assert (coverage.outline_px, coverage.uncovered_px) == (36, 12)
    assert coverage.uncovered_share == pytest.approx(1 / 3) and coverage.uncovered_mm2 == pytest.approx(6.0)
