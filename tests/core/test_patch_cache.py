"""The slice lattice and the patch cache: an edited outline runs only its new patches; nothing runs twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.analysis import analyze_case
from core.imaging import CtSlice
from core.lattice import cell_boxes, cut_cells, cut_lattice, plan_lattice
from core.patch_cache import PatchCache, slice_digest
from core.preprocess import PreprocessConfig
from models.checkpoint import LoadedModel

# Native grid (0.5 mm pixels, 0.5 mm target): 8-px (4 mm) patches every 4 px, a 16-px network input.
CFG = PreprocessConfig(target_spacing_mm=0.5, patch_px=8, stride_px=4, input_px=16)
SPACING = (0.5, 0.5)


def _slice(seed: int = 0, shape: tuple[int, int] = (96, 96)) -> CtSlice:
    """A CT slice in HU whose grey values (model window) are random but fixed by ``seed``."""
    hu = np.random.default_rng(seed).uniform(-75.0, 175.0, shape).astype(np.float32)
    return CtSlice(pixels=hu, is_hu=True, spacing_mm=SPACING, source_kind="dicom")


def _disk(radius_px: float, centre: tuple[float, float] = (48, 48), shape: tuple[int, int] = (96, 96)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius_px**2


class Counting:
    """Mean-brightness predictor (P = mean grey of the patch) that counts the patches it is shown."""

    def __init__(self, offset: float = 0.0) -> None:
        self.seen = 0
        self.offset = offset

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        p = ((x[:, 0] * CFG.std + CFG.mean).mean(dim=(1, 2)) + self.offset).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def _model(*networks: Counting, cache_id: str = "test-model") -> LoadedModel:
    return LoadedModel(
        networks[0], CFG, {}, "0" * 64, Path("m.pt"), members=networks if len(networks) > 1 else (), cache_id=cache_id
    )


def test_lattice_on_the_native_grid_matches_brute_force() -> None:
    mask = _disk(20.0)
    grid = plan_lattice(mask, SPACING, CFG)
    p, s = CFG.patch_px, CFG.stride_px
    expected = {
        (i, j)
        for i in range(-2, 96 // s + 1)
        for j in range(-2, 96 // s + 1)
        if mask[max(0, i * s) : max(0, i * s + p), max(0, j * s) : max(0, j * s + p)].sum() / p**2 >= 0.5
    }
    assert {tuple(c) for c in grid.cells} == expected
    np.testing.assert_array_equal(grid.boxes_img, cell_boxes(grid.cells, SPACING, CFG))
    np.testing.assert_allclose(grid.boxes_img[:, 2:] - grid.boxes_img[:, :2], 8.0)  # native grid: 8 image px
    assert np.all(grid.coverage >= 0.5)


def test_a_patch_is_the_same_whichever_outline_cut_it() -> None:
    """The lattice is the slice's: the shared cells of two outlines have identical boxes and pixels."""
    ct = _slice()
    grey = np.clip((ct.pixels + 75.0) / 250.0, 0, 1).astype(np.float32)
    cfg = PreprocessConfig(target_spacing_mm=0.2, patch_px=16, stride_px=8, input_px=16)  # 2.5× resampling
    small, p_small = cut_lattice(grey, _disk(14.0), SPACING, cfg)
    large, p_large = cut_lattice(grey, _disk(18.0, centre=(47, 50)), SPACING, cfg)
    index = {tuple(c): n for n, c in enumerate(large.cells)}
    shared = [(n, index[tuple(c)]) for n, c in enumerate(small.cells) if tuple(c) in index]
    assert len(shared) > 10
    for a, b in shared:
        np.testing.assert_array_equal(small.boxes_img[a], large.boxes_img[b])
        np.testing.assert_array_equal(p_small[a], p_large[b])
    subset = large.cells[::3]
    np.testing.assert_array_equal(cut_cells(grey, SPACING, cfg, subset), p_large[::3])


def test_slice_digest_is_of_the_content() -> None:
    ct = _slice()
    copy = ct.pixels.copy()
    assert slice_digest(ct.pixels, SPACING) == slice_digest(copy, SPACING)
    copy[50, 50] += 1.0
    assert slice_digest(ct.pixels, SPACING) != slice_digest(copy, SPACING)
    assert slice_digest(ct.pixels, SPACING) != slice_digest(ct.pixels, (0.5, 0.6))


def test_cache_is_a_bounded_lru_with_counts() -> None:
    cache = PatchCache(max_entries=3)
    cache.store(["a", "b", "c"], [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(cache.lookup(["a"]), [0.1])  # "a" is now the most recent
    cache.store(["d"], [0.4])  # evicts "b", the least recently used
    got = cache.lookup(["a", "b", "c", "d"])
    assert np.isnan(got[1]) and list(got[[0, 2, 3]]) == [0.1, 0.3, 0.4]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (4, 1, 3)
    cache.clear()
    assert (cache.stats().hits, len(cache)) == (0, 0)


def test_an_edited_outline_runs_only_its_new_patches() -> None:
    ct, net, cache = _slice(), Counting(), PatchCache()
    model = _model(net)
    first = analyze_case(ct, _disk(20.0), model, cache=cache)
    n_first = first.dl_risk.n_patches
    assert (first.patches_computed, first.patches_reused, net.seen) == (n_first, 0, n_first)

    again = analyze_case(ct, _disk(20.0), model, cache=cache)  # same outline: the network does not run
    assert (again.patches_computed, again.patches_reused, net.seen) == (0, n_first, n_first)
    np.testing.assert_array_equal(again.probabilities, first.probabilities)

    edited = _disk(20.0) | _disk(8.0, centre=(48, 74))  # a bulge drawn on the right
    before = {tuple(c) for c in first.grid.cells}
    new_cells = sum(tuple(c) not in before for c in plan_lattice(edited, SPACING, CFG).cells)
    net.seen = 0
    third = analyze_case(ct, edited, model, cache=cache)
    assert new_cells > 0 and third.patches_computed == new_cells == net.seen
    assert third.patches_reused == third.dl_risk.n_patches - new_cells
    uncached = analyze_case(ct, edited, model, cache=None)
    np.testing.assert_allclose(third.probabilities, uncached.probabilities, atol=1e-6)
    stats = cache.stats()
    assert stats.misses == n_first + new_cells and stats.hits == n_first + third.patches_reused


def test_two_models_in_memory_never_share_cached_answers() -> None:
    ct, cache = _slice(), PatchCache()
    low = LoadedModel(Counting(), CFG, {}, "0" * 64, Path("same.pt"))
    high = LoadedModel(Counting(offset=0.2), CFG, {}, "0" * 64, Path("same.pt"))  # same sha, other answers
    a = analyze_case(ct, _disk(20.0), low, cache=cache)
    b = analyze_case(ct, _disk(20.0), high, cache=cache)
    assert b.patches_reused == 0 and b.dl_risk.probability == pytest.approx(a.dl_risk.probability + 0.2, abs=1e-5)


def test_another_slice_or_geometry_is_another_patch() -> None:
    cache, model = PatchCache(), _model(Counting())
    analyze_case(_slice(0), _disk(20.0), model, cache=cache)
    assert analyze_case(_slice(1), _disk(20.0), model, cache=cache).patches_reused == 0
    other = LoadedModel(model.network, PreprocessConfig(target_spacing_mm=0.5, patch_px=8, stride_px=4, input_px=8),
                        {}, "", Path(), cache_id=model.cache_id)  # fmt: skip
    assert analyze_case(_slice(0), _disk(20.0), other, cache=cache).patches_reused == 0


def test_ensemble_risk_is_the_mean_of_member_risks_and_their_spread_is_exact() -> None:
    """Members answering mean grey + 0.0, + 0.1, + 0.35: risks differ by those offsets exactly."""
    nets = (Counting(0.0), Counting(0.1), Counting(0.35))
    result = analyze_case(_slice(), _disk(20.0), _model(*nets), cache=None)
    spread = result.spread
    base = spread.risks[0]
    np.testing.assert_allclose(spread.risks, [base, base + 0.1, base + 0.35], atol=1e-5)
    # the mean rule: risk of the per-patch ensemble mean == mean of the members' risks
    assert result.dl_risk.probability == pytest.approx(np.mean(spread.risks), abs=1e-12)
    assert spread.mean == pytest.approx(result.dl_risk.probability, abs=1e-12)
    assert (spread.low, spread.high) == (min(spread.risks), max(spread.risks))
    assert spread.sd == pytest.approx(np.std(spread.risks, ddof=1))
    assert result.member_probabilities.shape == (result.dl_risk.n_patches, 3)
    np.testing.assert_allclose(result.probabilities, result.member_probabilities.mean(axis=1))
    assert spread.names == ("member 1", "member 2", "member 3")
    assert spread.members_disagree == (spread.low < 0.5 <= spread.high)


def test_one_network_has_a_spread_of_one_value() -> None:
    result = analyze_case(_slice(), _disk(20.0), _model(Counting()), cache=None)
    assert result.spread.k == 1 and result.spread.low == result.spread.high == result.dl_risk.probability
    assert result.spread.sd == 0.0 and result.engine == "torch channels-last fp32"


def test_an_ensemble_reuses_a_members_cached_patches() -> None:
    """After one member's analysis, the ensemble runs only the other members."""
    nets = (Counting(), Counting(0.1))
    cache = PatchCache()
    single = LoadedModel(nets[0], CFG, {}, "", Path(), cache_id="ens")
    first = analyze_case(_slice(), _disk(20.0), single, cache=cache)
    ensemble = analyze_case(_slice(), _disk(20.0), _model(*nets, cache_id="ens"), cache=cache)
    n = first.dl_risk.n_patches
    assert (ensemble.patches_reused, ensemble.patches_computed, nets[1].seen) == (n, n, n)


def test_progress_counts_only_what_runs() -> None:
    calls: list[tuple[int, int]] = []
    cache, model = PatchCache(), _model(Counting(), Counting())
    result = analyze_case(_slice(), _disk(20.0), model, cache=cache, progress=lambda d, t: calls.append((d, t)))
    total = 2 * result.dl_risk.n_patches
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    calls.clear()
    analyze_case(_slice(), _disk(20.0), model, cache=cache, progress=lambda d, t: calls.append((d, t)))
    assert calls == []


def test_analysis_to_dict_is_plain() -> None:
    import json

    result = analyze_case(_slice(), _disk(20.0), _model(Counting(), Counting(0.1)), cache=None)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["spread"]["risks"] == list(result.spread.risks) and data["engine"] == result.engine
