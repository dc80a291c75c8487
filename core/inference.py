"""Run a patch classifier over a batch of patches and aggregate to a case risk.

The network is injected as a callable (logits out), as MONAI's sliding-window
inferer does, so tests can use predictors whose outputs are known exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from core.cpu import native_bf16
from core.preprocess import PreprocessConfig

Precision = Literal["auto", "fp32", "bf16"]
INFERENCE_BATCH = 32  # patches per forward pass, the dashboard's and cross-validation's alike
ProgressFn = Callable[[int, int], None]

# The one case-level rule of the code base: the dashboard, `core analyze`, cross-validation
# and every report score a case (a patient) with `aggregate` and these thresholds.
AGGREGATION_RULE = "mean of the per-patch probabilities"
PATCH_THRESHOLD = 0.5  # a patch "votes" early recurrence at or above this probability
CASE_THRESHOLD = 0.5  # a case is predicted early recurrence when its risk is at or above this
PATIENT_RULE = (
    f"patient risk = {AGGREGATION_RULE} over all its patches; early recurrence predicted when ≥ {CASE_THRESHOLD:g}"
)


@dataclass(frozen=True)
class CaseRisk:
    """Deep-learning risk of one case.

    Attributes:
        probability: mean patch probability of early recurrence, 0–1.
        share_above: share of patches with probability ≥ ``threshold``, 0–1.
        n_patches: number of patches the risk rests on.
        threshold: patch-level decision threshold.
        rule: the aggregation rule, in words.
    """

    probability: float
    share_above: float
    n_patches: int
    threshold: float = PATCH_THRESHOLD
    rule: str = AGGREGATION_RULE


def aggregate(probabilities: np.ndarray, threshold: float = PATCH_THRESHOLD) -> CaseRisk:
    """Case risk from (N,) patch probabilities in [0, 1]; N ≥ 1.

    Raises:
        ValueError: no probabilities, or a non-finite one (a risk is never averaged over NaN).
    """
    if probabilities.size == 0:
        raise ValueError("no patch probabilities to aggregate")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("patch probabilities contain NaN or infinity")
    return CaseRisk(
        probability=float(np.mean(probabilities)),
        share_above=float(np.mean(probabilities >= threshold)),
        n_patches=int(probabilities.size),
        threshold=threshold,
    )


def quantise_grey(patches: np.ndarray) -> np.ndarray:
    """(N, P, P) grey in [0, 1] → uint8 0–255, the form every scored patch takes.

    The dashboard and cross-validation score the same uint8 patches, so a validation
    patient gets exactly the number the page would show. Nothing is lost: in the default
    250-HU window one HU is 1/250 of the grey range, coarser than uint8's 1/255 steps.
    """
    return np.round(np.clip(patches, 0.0, 1.0) * 255.0).astype(np.uint8)


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 / AMX), after any ISA cap.

    torch's own probe reads CPUID and ignores ``ONEDNN_MAX_CPU_ISA``; under a cap (an AVX2-only
    CPU emulated on a bigger one) bf16 would be emulated and about 5× slower than fp32.
    """
    return native_bf16()


def resolve_autocast(device: torch.device, precision: Precision) -> torch.dtype | None:
    """Autocast dtype for a device and a precision request; ``None`` means plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" or bf16_supported():
        return torch.bfloat16
    return None


def to_network_input(patches: np.ndarray, cfg: PreprocessConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, P, P) patches → (B, 3, S, S) float32 normalised network input on ``device``.

    Accepts float32 grey in [0, 1] or uint8 grey 0–255. The patches travel to the device
    first, so resizing and normalisation run there (on a GPU the CPU would otherwise be
    the bottleneck). Resizing is bilinear (antialiased when shrinking); the grey channel is
    repeated three times because the ResNet stem expects RGB.
    """
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(device, non_blocking=True).unsqueeze(1)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != cfg.input_px or x.shape[-2] != cfg.input_px:
        shrinking = cfg.input_px < x.shape[-1]
        x = F.interpolate(
            x, size=(cfg.input_px, cfg.input_px), mode="bilinear", align_corners=False, antialias=shrinking
        )
    x = (x - cfg.mean) / cfg.std
    return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_patches(
    model: Callable[[torch.Tensor], torch.Tensor],
    patches: np.ndarray,
    cfg: PreprocessConfig,
    *,
    batch_size: int = INFERENCE_BATCH,
    device: torch.device | str = "cpu",
    precision: Precision = "auto",
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Probability of early recurrence for every patch.

    Args:
        model: maps (B, 3, S, S) float input to (B, C) logits.
        patches: (N, P, P) float32 in [0, 1] or uint8 0–255.
        cfg: preprocessing of the model (input size, normalisation, positive class).
        batch_size: patches per forward pass.
        progress: called as ``progress(done, total)`` after every batch.

    Returns:
        (N,) float64 probabilities in [0, 1].
    """
    if patches.ndim != 3:
        raise ValueError(f"patches must be (N, P, P), got shape {patches.shape}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    device = torch.device(device)
    autocast_dtype = resolve_autocast(device, precision)
    total = patches.shape[0]
    out = np.empty(total, dtype=np.float64)
    for start in range(0, total, batch_size):
        batch = to_network_input(patches[start : start + batch_size], cfg, device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(batch)
        probs = torch.softmax(logits.float(), dim=1)[:, cfg.positive_index]
        out[start : start + batch.shape[0]] = probs.cpu().numpy()
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return out
