"""``python -m core bench``: speed of the ResNet50 patch model, as ratios to an fp32 baseline
measured in the same run. Never used as a timed assertion in tests.

Sections:
* inference: patches/s at the paper's input (224 px) — fp32 contiguous (baseline)
  against channels-last + bfloat16 autocast — and one whole sample case, Analyze to map.
* training (``--train``): patches/s of one optimisation step at the paper's
  configuration (224 px, batch 128) — fp32 (baseline) against mixed precision — and
  the projected wall time of a paper-scale run (71,081 patches × 50 epochs, 5 folds
  training on 4/5 of the patches each, plus the final model on all of them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from core.inference import bf16_supported
from models.resnet import build_resnet50

PAPER_PATCHES = 71_081
PAPER_EPOCHS = 50


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[], None], batch: int, repeats: int, device: torch.device, warmup: int = 2) -> float:
    """Patches per second of ``step`` (one batch), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return batch * repeats / (time.perf_counter() - started)


def inference_rates(batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Forward patches/s: fp32 contiguous baseline vs channels-last + low-precision autocast."""
    net = build_resnet50(seed=0).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    low = torch.bfloat16 if (device.type == "cuda" or bf16_supported()) else None
    out: dict[str, float] = {}
    with torch.inference_mode():
        out["fp32_baseline"] = _rate(lambda: net(x), batch, repeats, device)
        net_cl, x_cl = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        if low is not None:

            def fast() -> None:
                with torch.autocast(device.type, dtype=low):
                    net_cl(x_cl)

            out["channels_last_bf16"] = _rate(fast, batch, repeats, device)
    return out


def training_rates(batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Optimisation-step patches/s (Adam, cross-entropy): fp32 baseline vs bf16 autocast."""
    rates = {}
    for name, dtype in (("fp32_baseline", None), ("channels_last_bf16", torch.bfloat16)):
        if dtype is not None and device.type == "cpu" and not bf16_supported():
            continue
        net = build_resnet50(seed=0).train().to(device)
        if dtype is not None:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=2.5e-4)
        x = torch.randn(batch, 3, 224, 224, device=device)
        if dtype is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,), device=device)

        rates[name] = _rate(_train_step(net, opt, x, y, dtype), batch, repeats, device)
    return rates


def _train_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None
) -> Callable[[], None]:
    """One Adam step on a fixed batch, under autocast when ``dtype`` is given."""

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def paper_scale_hours(patches_per_s: float) -> float:
    """Hours for 5-fold CV (each fold trains on 4/5) plus a final model, 50 epochs each."""
    patch_steps = PAPER_PATCHES * PAPER_EPOCHS * (5 * 0.8 + 1)
    return patch_steps / patches_per_s / 3600


def sample_case_seconds() -> tuple[float, int]:
    """(seconds, patches) of Analyze → probability map for the built-in sample case with a random ResNet50."""
    from core.analysis import analyze_case
    from core.imaging import load_slice
    from core.phantom import sample_case
    from core.preprocess import PreprocessConfig
    from core.roi import mask_from_outlines
    from models.checkpoint import LoadedModel

    sample = sample_case()
    ct = load_slice(sample.dicom_bytes)
    mask = mask_from_outlines([sample.outline_xy], ct.shape)
    model = LoadedModel(build_resnet50(seed=0).eval(), PreprocessConfig(), {}, "", Path())
    result = analyze_case(ct, mask, model)
    return result.seconds, result.dl_risk.n_patches


def run_benchmarks(quick: bool = False, out: Path | None = None, train: bool = False) -> str:
    """Run the sections and return a readable report (also JSON to ``out``)."""
    device = _device()
    repeats = 2 if quick else 5
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    inf_batch = 128 if device.type == "cuda" else 32
    results["inference_patches_per_s"] = inference_rates(
        inf_batch, repeats * (10 if device.type == "cuda" else 1), device
    )
    if device.type == "cpu":
        results["sample_case_seconds"], results["sample_case_patches"] = sample_case_seconds()
    if train:
        batch = 128 if device.type == "cuda" else 16
        rates = training_rates(batch, repeats * (5 if device.type == "cuda" else 1), device)
        results["training_patches_per_s"] = rates
        results["paper_scale_hours"] = {k: paper_scale_hours(v) for k, v in rates.items()}
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    return _render(results)


def _render(results: dict) -> str:
    lines = [f"device: {results['device']} (torch {results['torch']}, {results['threads']} threads)"]
    for section in ("inference_patches_per_s", "training_patches_per_s"):
        rates = results.get(section)
        if not rates:
            continue
        base = rates["fp32_baseline"]
        lines.append(section.replace("_", " ") + ":")
        lines += [
            f"  {name:20s} {value:9.1f} patches/s  ×{value / base:.2f} vs fp32 baseline"
            for name, value in rates.items()
        ]
    if "sample_case_seconds" in results:
        lines.append(
            f"sample case ({results['sample_case_patches']} patches), Analyze → map: "
            f"{results['sample_case_seconds']:.1f} s"
        )
    if "paper_scale_hours" in results:
        lines.append("paper-scale run (71,081 patches × 50 epochs, 5-fold CV + final model):")
        lines += [f"  {k:20s} {v:7.2f} h" for k, v in results["paper_scale_hours"].items()]
    return "\n".join(lines)
