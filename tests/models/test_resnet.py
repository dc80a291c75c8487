"""models/resnet.py is torchvision's resnet50 module for module, without importing torchvision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from models.resnet import build_resnet50

ROOT = Path(__file__).resolve().parents[2]


def _torchvision(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return resnet50(weights=None, num_classes=2)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_seed_gives_torchvisions_weights_under_the_same_names(seed: int) -> None:
    ours, theirs = build_resnet50(seed=seed).state_dict(), _torchvision(seed).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_without_a_seed_it_draws_as_much_from_the_rng_as_torchvision() -> None:
    torch.manual_seed(7)
    build_resnet50()
    after_ours = torch.rand(3)
    torch.manual_seed(7)
    resnet50(weights=None, num_classes=2)
    assert torch.equal(after_ours, torch.rand(3))


@pytest.mark.parametrize("training", [False, True])
def test_the_forward_pass_and_its_gradients_are_torchvisions(training: bool) -> None:
    ours, theirs = build_resnet50(seed=1).train(training), _torchvision(1).train(training)
    x = torch.randn(2, 3, 64, 64)
    out_ours, out_theirs = ours(x), theirs(x)
    assert out_ours.shape == (2, 2) and torch.equal(out_ours, out_theirs)
    out_ours.sum().backward()
    out_theirs.sum().backward()
    assert torch.equal(ours.conv1.weight.grad, theirs.conv1.weight.grad)
    assert torch.equal(ours.layer4[2].conv3.weight.grad, theirs.layer4[2].conv3.weight.grad)


def test_the_dashboards_modules_do_not_import_torchvision() -> None:
    # importing torchvision costs 164 MiB (its ops import torch._dynamo and Triton): see models/resnet.py
    modules = sorted({path.stem for path in (ROOT / "core").glob("*.py")} - {"__init__", "__main__"})
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module('core.' + name)\n"
        "import models.checkpoint, models.resnet\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'triton') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
