"""Training and patient-level k-fold cross-validation of the patch ResNet50, as in the paper.

Recipe (paper defaults): ResNet50 from scratch, 2 classes, 50 epochs, batch 128,
learning rate 0.00025. The paper does not name its optimizer; we use Adam
(β = 0.9, 0.999, no weight decay), the usual choice at that learning rate. Patches
come from the same code the dashboard uses (:func:`core.patches.extract_patches`)
and are augmented with the 8 flips/rotations of the square (tumour texture has no
orientation). Mixed precision: bfloat16 autocast on CPUs with BF16 and on CUDA.

Honesty: folds are split **by patient**, stratified by label; no patient is in two
folds. Each patient gets one prediction (the mean of its patch probabilities,
the dashboard's rule), and patient-level metrics come first.

Scale-out: run under ``torchrun --nproc_per_node N``; each global batch is split
across processes with DistributedDataParallel (gloo on CPU, nccl on GPU) and only
rank 0 evaluates and writes files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from core.clinical import NCategoryLogisticRegression
from core.cohort import CohortPatient, load_mask, load_patient_image, read_manifest
from core.errors import ManifestError, RoiError
from core.imaging import model_grey
from core.inference import predict_patches, resolve_autocast, to_network_input
from core.metrics import binary_metrics, mean_sd
from core.patches import extract_patches
from core.preprocess import PreprocessConfig
from models.checkpoint import make_card, save_checkpoint
from models.resnet import build_resnet50

PATIENT_RULE = "patient risk = mean of its patch probabilities; early recurrence predicted when ≥ 0.5"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training / cross-validation run (paper defaults)."""

    folds: int = 5
    epochs: int = 50
    batch_size: int = 128
    lr: float = 2.5e-4
    seed: int = 0
    device: str = "auto"
    max_patches_per_patient: int | None = None
    permute_labels: bool = False
    final_model: bool = True
    augment: bool = True
    training_data: str = "real patients"
    model_name: str = "ResNet50 patch model"

    def fingerprint(self, preprocess: PreprocessConfig) -> str:
        """Hash of everything that changes the result, to refuse resuming a different run."""
        keys = {k: v for k, v in asdict(self).items() if k not in {"device", "model_name"}}
        blob = json.dumps([keys, preprocess.to_dict()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class PatientPatches:
    """One patient's training material: (N, P, P) uint8 patches (grey × 255) and labels."""

    key: str
    label: int
    n_category: str
    tumour_size_mm: float | None
    patches: np.ndarray


@dataclass
class FoldResult:
    fold: int
    patient_level: dict[str, dict[str, float]] = field(default_factory=dict)  # "train" / "validation"
    patch_level: dict[str, dict[str, float]] = field(default_factory=dict)
    validation_patients: list[dict[str, Any]] = field(default_factory=list)
    train_patches_per_s: float = 0.0
    seconds: float = 0.0


# ---------------------------------------------------------------- distributed helpers


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def resolve_device(name: str) -> torch.device:
    """ "auto" → this rank's CUDA device when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


# ---------------------------------------------------------------- data


def assign_folds(keys: Sequence[str], labels: Sequence[int], n_folds: int, seed: int) -> dict[str, int]:
    """Stratified patient-level folds: each label's patients shuffled, then dealt round-robin."""
    if n_folds < 2:
        raise ValueError("at least 2 folds are needed")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    offset = 0
    for label in sorted(set(labels)):
        members = [k for k, lab in zip(keys, labels, strict=True) if lab == label]
        for i, index in enumerate(rng.permutation(len(members))):
            folds[members[index]] = (i + offset) % n_folds
        offset += len(members)
    assert len(folds) == len(set(keys)), "a patient was assigned to two folds"
    return folds


def build_patient_patches(
    patients: Sequence[CohortPatient],
    labels: Sequence[int],
    cfg: PreprocessConfig,
    max_patches: int | None,
    seed: int,
    show_progress: bool = True,
) -> list[PatientPatches]:
    """Cut every patient's patch grid (capped at ``max_patches``, a seeded subset).

    Raises:
        ManifestError: listing the patients whose outline yields no patch.
    """
    out, problems = [], []
    for index, (patient, label) in enumerate(
        tqdm(list(zip(patients, labels, strict=True)), desc="patches", disable=not show_progress)
    ):
        ct = load_patient_image(patient.image_path)
        try:
            _, patches = extract_patches(model_grey(ct, cfg), load_mask(patient.mask_path), ct.spacing_mm, cfg)
        except RoiError as error:
            problems.append(f"{patient.key}: {error}")
            continue
        if max_patches is not None and len(patches) > max_patches:
            keep = np.sort(np.random.default_rng([seed, index]).choice(len(patches), max_patches, replace=False))
            patches = patches[keep]
        # uint8 keeps a quarter of the memory and loses nothing: in the default 250-HU window
        # one HU is already 1/250 of the grey range, coarser than uint8's 1/255 steps.
        out.append(
            PatientPatches(
                patient.key,
                int(label),
                patient.n_category,
                patient.tumour_size_mm,
                np.round(patches * 255.0).astype(np.uint8),
            )
        )
    if problems:
        raise ManifestError(problems)
    return out


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply one of the 8 symmetries of the square to each (P, P) patch."""
    out = np.empty_like(batch)
    for i, op in enumerate(rng.integers(0, 8, size=len(batch))):
        patch = np.rot90(batch[i], k=int(op) % 4)
        out[i] = patch[:, ::-1] if op >= 4 else patch
    return out


# ---------------------------------------------------------------- training


def train_network(
    data: Sequence[PatientPatches],
    cfg: PreprocessConfig,
    tc: TrainConfig,
    device: torch.device,
    seed: int,
    state_path: Path | None = None,
    desc: str = "train",
) -> tuple[torch.nn.Module, float]:
    """Train a fresh ResNet50 on every patch of ``data``; returns it and patches/s.

    Resumable: after every epoch rank 0 writes ``state_path`` (weights, optimizer,
    epoch); a later call with the same path continues from there.
    """
    rank, size = world()
    patches = np.concatenate([p.patches for p in data])
    labels = np.concatenate([np.full(len(p.patches), p.label, dtype=np.int64) for p in data])
    network = build_resnet50(num_classes=len(cfg.labels), seed=seed).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=tc.lr)
    start_epoch = _resume(state_path, network, optimizer)
    model: torch.nn.Module = network
    if size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast_dtype = resolve_autocast(device, "auto")
    seen, busy = 0, 0.0
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(patches))
        n_batches = max(1, len(order) // tc.batch_size)  # drop the ragged tail: BatchNorm needs > 1 sample
        bar = tqdm(range(n_batches), desc=f"{desc} epoch {epoch + 1}/{tc.epochs}", disable=rank != 0, leave=False)
        started = time.perf_counter()
        for b in bar:
            index = order[b * tc.batch_size : (b + 1) * tc.batch_size][rank::size]
            batch = patches[index]
            if tc.augment:
                batch = _augment(batch, rng)
            x = to_network_input(batch, cfg, device)  # uint8 travels; resizing runs on the device
            y = torch.from_numpy(labels[index]).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            seen += len(index) * size
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        busy += time.perf_counter() - started
        if state_path is not None and rank == 0:
            _save_state(state_path, network, optimizer, epoch + 1)
        barrier()
    network.eval()
    return network, (seen / busy if busy > 0 else 0.0)


def _resume(state_path: Path | None, network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    if state_path is None or not state_path.exists():
        return 0
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])


def _save_state(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- evaluation


def patch_probabilities(
    network: torch.nn.Module, data: Sequence[PatientPatches], cfg: PreprocessConfig, device: torch.device
) -> list[np.ndarray]:
    """(N_i,) probabilities of early recurrence for each patient's patches."""
    return [predict_patches(network, p.patches, cfg, batch_size=128, device=device) for p in data]


def evaluate(data: Sequence[PatientPatches], probs: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    """(patient-level, patch-level) metrics; a patient's score is its mean patch probability."""
    patient_scores = np.array([p.mean() for p in probs])
    patient_labels = np.array([d.label for d in data])
    patch_scores = np.concatenate(probs)
    patch_labels = np.concatenate([np.full(len(p), d.label) for d, p in zip(data, probs, strict=True)])
    return binary_metrics(patient_labels, patient_scores), binary_metrics(patch_labels, patch_scores)


def clinical_scores(train: Sequence[PatientPatches], validation: Sequence[PatientPatches]) -> list[float | None]:
    """Out-of-fold N-category logistic regression risks (``None`` where N is unknown)."""
    known = [p for p in train if p.n_category in {"N0", "N1"}]
    if len({p.label for p in known}) < 2:
        return [None] * len(validation)
    model = NCategoryLogisticRegression().fit(
        np.array([p.n_category == "N1" for p in known], dtype=float), np.array([p.label for p in known])
    )
    return [
        float(model.predict_proba_n1(np.array([p.n_category == "N1"]))[0]) if p.n_category in {"N0", "N1"} else None
        for p in validation
    ]


# ---------------------------------------------------------------- the whole run


def cross_validate(manifest: Path, out: Path, tc: TrainConfig, cfg: PreprocessConfig) -> dict[str, Any]:
    """Validate the manifest, run k-fold CV by patient, train the deployable model, write the report.

    Files under ``out``: ``folds.csv``, ``fold{k}/model.pt`` and ``result.json`` per fold,
    ``model.pt`` (trained on all patients after CV), ``metrics.json``, ``report.md``,
    ``roc.html`` / ``roc.png``. Re-running with the same arguments resumes.
    """
    device = resolve_device(tc.device)
    init_distributed(device)
    rank, size = world()
    torch.manual_seed(tc.seed)
    patients = read_manifest(manifest)
    labels = [p.label for p in patients]
    if tc.permute_labels:
        labels = [int(v) for v in np.random.default_rng([tc.seed, 99]).permutation(labels)]
    folds = assign_folds([p.key for p in patients], labels, tc.folds, tc.seed)
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(out, tc, cfg, rank)
    if rank == 0:
        write_folds(out / "folds.csv", folds)
    data = build_patient_patches(patients, labels, cfg, tc.max_patches_per_patient, tc.seed, show_progress=rank == 0)
    results = [_run_fold(k, data, folds, out, tc, cfg, device) for k in range(tc.folds)]
    final_throughput = None
    if tc.final_model:
        network, final_throughput = train_network(
            data, cfg, tc, device, seed=tc.seed + 1000, state_path=out / "final" / "state.pt", desc="all patients"
        )
    summary = summarise(results, data, folds, tc, cfg, size, final_throughput)
    if rank == 0:
        from core.report import write_report

        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        if tc.final_model:
            card = _card(summary, tc, len(data))
            summary["model_sha256"] = save_checkpoint(out / "model.pt", network, cfg, card)
        write_report(out, summary)
    barrier()
    return summary


def _run_fold(
    k: int,
    data: Sequence[PatientPatches],
    folds: dict[str, int],
    out: Path,
    tc: TrainConfig,
    cfg: PreprocessConfig,
    device: torch.device,
) -> FoldResult:
    rank, _ = world()
    done = out / f"fold{k + 1}" / "result.json"
    if done.exists():
        barrier()
        return FoldResult(**json.loads(done.read_text()))
    started = time.perf_counter()
    train = [p for p in data if folds[p.key] != k]
    validation = [p for p in data if folds[p.key] == k]
    network, throughput = train_network(
        train,
        cfg,
        tc,
        device,
        seed=tc.seed + k,
        state_path=out / f"fold{k + 1}" / "state.pt",
        desc=f"fold {k + 1}/{tc.folds}",
    )
    result = FoldResult(fold=k + 1, train_patches_per_s=throughput)
    if rank == 0:
        train_probs = patch_probabilities(network, train, cfg, device)
        val_probs = patch_probabilities(network, validation, cfg, device)
        result.patient_level["train"], result.patch_level["train"] = evaluate(train, train_probs)
        result.patient_level["validation"], result.patch_level["validation"] = evaluate(validation, val_probs)
        clinical = clinical_scores(train, validation)
        result.validation_patients = [
            {
                "patient_key": p.key,
                "label": p.label,
                "n_category": p.n_category,
                "tumour_size_mm": p.tumour_size_mm,
                "dl_probability": float(pr.mean()),
                "patch_accuracy": float(np.mean((pr >= 0.5) == bool(p.label))),
                "n_patches": len(pr),
                "clinical_probability": c,
            }
            for p, pr, c in zip(validation, val_probs, clinical, strict=True)
        ]
        result.seconds = time.perf_counter() - started
        save_checkpoint(
            out / f"fold{k + 1}" / "model.pt",
            network,
            cfg,
            make_card(f"{tc.model_name}, fold {k + 1}", f"fold {k + 1} of {tc.folds}", tc.training_data),
        )
        done.write_text(json.dumps(asdict(result), default=_json_default))
    barrier()
    return FoldResult(**json.loads(done.read_text())) if rank != 0 else result


def summarise(
    results: Sequence[FoldResult],
    data: Sequence[PatientPatches],
    folds: dict[str, int],
    tc: TrainConfig,
    cfg: PreprocessConfig,
    processes: int,
    final_throughput: float | None,
) -> dict[str, Any]:
    """metrics.json content: per fold and mean ± SD at both levels, patient level first."""
    levels: dict[str, Any] = {}
    for level in ("patient_level", "patch_level"):
        levels[level] = {
            split: mean_sd([getattr(r, level)[split] for r in results]) for split in ("train", "validation")
        }
    patients = [row | {"fold": r.fold} for r in results for row in r.validation_patients]
    accuracies = np.array([p["patch_accuracy"] for p in patients])
    q1 = float(np.quantile(accuracies, 0.25)) if len(accuracies) else float("nan")
    for p in patients:
        p["first_quartile"] = bool(p["patch_accuracy"] <= q1)
    pooled_labels = np.array([p["label"] for p in patients])
    pooled = binary_metrics(pooled_labels, np.array([p["dl_probability"] for p in patients]))
    known = [p for p in patients if p["clinical_probability"] is not None]
    clinical = binary_metrics(
        np.array([p["label"] for p in known]), np.array([p["clinical_probability"] for p in known])
    )
    return {
        "config": asdict(tc),
        "preprocess": cfg.to_dict(),
        "patient_rule": PATIENT_RULE,
        "cohort": {
            "patients": len(data),
            "early_recurrence": int(sum(p.label for p in data)),
            "patches": int(sum(len(p.patches) for p in data)),
            "permuted_labels": tc.permute_labels,
        },
        "folds": [asdict(r) for r in results],
        "summary": levels,
        "out_of_fold_patient_level": {"dl": pooled, "clinical_n_category": clinical, "clinical_patients": len(known)},
        "table4": {"first_quartile_patch_accuracy": q1, "patients": patients},
        "fold_assignment": folds,
        "throughput": {
            "train_patches_per_s_per_fold": [r.train_patches_per_s for r in results],
            "final_train_patches_per_s": final_throughput,
            "processes": processes,
            "device": str(resolve_device(tc.device)),
        },
    }


def _card(summary: dict[str, Any], tc: TrainConfig, n_patients: int) -> dict[str, Any]:
    synthetic = tc.training_data != "real patients"
    provenance = (
        "trained on synthetic phantoms — not for clinical use"
        if synthetic
        else f"trained on {n_patients} patients of the local cohort"
    )
    return make_card(
        tc.model_name,
        provenance,
        tc.training_data,
        cohort=summary["cohort"],
        deployable="one ResNet50 trained on all patients after cross-validation (same recipe)",
        cv_metrics={
            "patient_level": summary["summary"]["patient_level"],
            "patch_level": summary["summary"]["patch_level"],
            "out_of_fold_patient_level": {
                "dl_auc": summary["out_of_fold_patient_level"]["dl"]["auc"],
                "clinical_n_category_auc": summary["out_of_fold_patient_level"]["clinical_n_category"]["auc"],
            },
            "patient_rule": PATIENT_RULE,
            "note": "patch-level figures are secondary: the patches of one patient are not independent",
        },
        training={k: v for k, v in summary["config"].items() if k != "device"},
    )


def write_folds(path: Path, folds: dict[str, int]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_key", "fold"])
        for key, fold in folds.items():
            writer.writerow([key, fold + 1])


def _check_fingerprint(out: Path, tc: TrainConfig, cfg: PreprocessConfig, rank: int) -> None:
    stamp = out / "run.json"
    fingerprint = tc.fingerprint(cfg)
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") != fingerprint:
        raise ManifestError([f"{out} holds a run with other settings; choose another --out or delete it"])
    if rank == 0:
        stamp.write_text(json.dumps({"fingerprint": fingerprint}))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
