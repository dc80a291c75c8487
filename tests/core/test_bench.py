"""``python -m core bench``: the standard case and the report's fields (never a timed assertion)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.bench import inference_benchmark, interleaved_rates, peak_rss_mb, random_ensemble, standard_case
from core.preprocess import PreprocessConfig

SMALL = PreprocessConfig(target_spacing_mm=0.5, patch_px=16, stride_px=8, input_px=32)
REQUIRED = {
    "cpu_features",
    "engine",
    "baseline_patches_per_s",
    "patches_per_s",
    "speedup_vs_fp32_eager",
    "max_abs_prob_diff",
    "e2e_over_inference",
    "reopen_s",
    "uncertainty_over_single",
    "peak_rss_mb",
}


def test_standard_case_is_the_one_the_issue_names() -> None:
    ct, mask = standard_case()
    assert ct.shape == (512, 512) and ct.spacing_mm == pytest.approx((0.7, 0.7), abs=1e-3)
    diameter_mm = 2 * np.sqrt(mask.sum() * ct.pixel_area_mm2 / np.pi)
    assert 45 <= diameter_mm <= 56  # a 55 mm tumour (its outline wobbles inward)
    again_ct, again_mask = standard_case()
    assert np.array_equal(again_ct.pixels, ct.pixels) and np.array_equal(again_mask, mask)


def test_interleaved_rates_report_both_sides_and_their_difference() -> None:
    batches = [torch.rand(4, 3, 8, 8) for _ in range(3)]

    def first(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 2)

    def second(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 0.4]]).repeat(len(x), 1)

    rates = interleaved_rates(first, second, batches, positive_index=1)
    assert rates["first_patches_per_s"] > 0 and rates["second_patches_per_s"] > 0
    assert rates["max_abs_prob_diff"] == pytest.approx(float(torch.sigmoid(torch.tensor(0.4))) - 0.5, abs=1e-6)


def test_peak_rss_is_read() -> None:
    assert peak_rss_mb() > 10


def test_the_report_has_every_field_the_issue_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole inference section on a small input, torch backends only, no memory probe."""
    monkeypatch.setenv("ICCA_ENGINE_CACHE", str(tmp_path / "choice.json"))
    results = inference_benchmark(
        quick=True,
        members=2,
        cfg=SMALL,
        backend_keys=("torch-cl-fp32", "torch-eager-fp32"),
        measure_rss=False,
    )
    assert set(results) >= REQUIRED and json.loads(json.dumps(results)) == results
    assert results["members"] == 2 and results["case"]["patches"] > 50
    assert results["max_abs_prob_diff"] <= 0.02 and results["speedup_vs_fp32_eager"] > 0
    assert results["e2e_over_inference"] > 0 and results["uncertainty_over_single"] > 0
    assert results["reopen_s"] is not None, results.get("reopen_error")
    assert set(results["sensitivity"]) == {"-2 mm", "-1 mm", "+0 mm", "+1 mm", "+2 mm"}


def test_random_ensemble_has_a_fixed_identity() -> None:
    model = random_ensemble(2, SMALL)
    assert model.cache_id == random_ensemble(2, SMALL).cache_id and model.names == ("seed 0", "seed 1")
