from __future__ import annotations

import numpy as np
import pytest
import torch

from core.inference import aggregate, predict_patches, to_network_input
from core.preprocess import PreprocessConfig

CFG = PreprocessConfig(patch_px=16, input_px=32)


def mean_brightness_model(x: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax gives P(positive) = mean of the de-normalised input, exactly."""
    p = (x[:, 0] * CFG.std + CFG.mean).mean(dim=(1, 2)).clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def test_known_predictor_gives_known_probabilities_in_any_batch_size() -> None:
    levels = np.linspace(0.1, 0.9, 9)
    patches = np.stack([np.full((16, 16), v, np.float32) for v in levels])
    for batch_size in (1, 4, 64):
        probs = predict_patches(mean_brightness_model, patches, CFG, batch_size=batch_size, precision="fp32")
        np.testing.assert_allclose(probs, levels, atol=1e-5)


def test_progress_reports_every_batch() -> None:
    calls: list[tuple[int, int]] = []
    predict_patches(
        mean_brightness_model,
        np.zeros((10, 16, 16), np.float32) + 0.5,
        CFG,
        batch_size=4,
        precision="fp32",
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_network_input_shape_and_normalisation() -> None:
    x = to_network_input(np.ones((2, 16, 16), np.float32), CFG)
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x, torch.ones_like(x))


def test_aggregate_rule() -> None:
    risk = aggregate(np.array([0.2, 0.4, 0.6, 0.8]))
    assert risk.probability == pytest.approx(0.5) and risk.share_above == pytest.approx(0.5) and risk.n_patches == 4


def test_real_resnet50_runs_in_bf16_and_fp32_alike() -> None:
    from models.resnet import build_resnet50

    net = build_resnet50(seed=0).eval()
    patches = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    fp32 = predict_patches(net, patches, CFG, precision="fp32")
    bf16 = predict_patches(net, patches, CFG, precision="bf16")
    assert fp32.shape == (3,) and np.all((fp32 >= 0) & (fp32 <= 1))
    np.testing.assert_allclose(bf16, fp32, atol=0.05)


def test_uint8_patches_equal_their_float_version() -> None:
    grey = np.random.default_rng(3).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    a = to_network_input(grey, CFG)
    b = to_network_input(grey.astype(np.float32) / 255.0, CFG)
    assert torch.allclose(a, b, atol=1e-6)
