"""Training and patient-level k-fold cross-validation of the patch ResNet50, as in the paper.

Recipe (paper defaults): ResNet50 from scratch, 2 classes, 50 epochs, batch 128,
learning rate 0.00025. The paper does not name its optimizer; we use Adam
(β = 0.9, 0.999, no weight decay), the usual choice at that learning rate. Patches
come from the same code the dashboard uses (:func:`core.lattice.cut_lattice`,
images calibrated as :func:`core.cohort.load_calibrated_image` says) and are augmented
with the 8 flips/rotations of the square (tumour texture has no orientation). Mixed
precision: bfloat16 autocast on CPUs with native BF16 and on CUDA; float16 (CUDA without
bf16) trains with a gradient scaler. A non-finite loss stops the run.

The deployable model (``TrainConfig.deployable``) is either one network trained on all
patients after CV ("final", the paper's way) or the K fold networks themselves, deployed
as an ensemble whose case risk is their mean ("ensemble", as nnU-Net deploys its folds):
it spares the final training and gives every case a spread across folds.

Honesty: folds are split **by patient**, stratified by label; no patient is in two
folds. A validation patient is scored exactly as the dashboard scores a case with that
fold's model and the default (fp32) engine: every patch of its grid,
:func:`core.inference.aggregate`, :data:`core.inference.CASE_THRESHOLD`.
``max_patches_per_patient`` caps the *training* patches of a patient per epoch (a fresh
draw each epoch); scoring always uses every patch. The headline is the
pooled out-of-fold patient-level AUC with DeLong's 95% CI; fold means ± SD come second.
What the model was trained on comes from the data (the manifest's ``data_source`` or
``--data-source``), never from a default. A permuted-label control writes no model.

Scale-out: run under ``torchrun --nproc_per_node N``; each global batch is split
across processes with DistributedDataParallel (gloo on CPU, nccl on GPU) and only
rank 0 evaluates and writes files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from core.clinical import N_CATEGORIES, NCategoryLogisticRegression, n1_indicator
from core.cohort import (
    CohortPatient,
    content_sha256,
    load_calibrated_image,
    load_mask,
    manifest_data_source,
    read_manifest,
)
from core.demo_build import report_progress
from core.errors import (
    ControlRunError,
    DataSourceError,
    ManifestError,
    ResumeMismatchError,
    RoiError,
    TrainingDivergedError,
    UserFacingError,
)
from core.files import beside, replaced_on_success
from core.imaging import model_grey
from core.inference import (
    CASE_THRESHOLD,
    INFERENCE_BATCH,
    PATCH_THRESHOLD,
    PATIENT_RULE,
    CaseRisk,
    aggregate,
    predict_patches,
    resolve_autocast,
    to_network_input,
)
from core.lattice import cut_lattice
from core.metrics import CI_METHOD, binary_metrics, delong_auc, mean_sd
from core.preprocess import PreprocessConfig
from core.provenance import DATA_SOURCES, PERMUTED_CONTROL, REAL_PATIENTS, SYNTHETIC_PHANTOMS
from core.uncertainty import SPREAD_RULE
from models.checkpoint import ENSEMBLE_RULE, load_checkpoint, make_card, save_checkpoint
from models.resnet import build_resnet50

ROOT = Path(__file__).resolve().parents[1]
# The source files whose change can change a training run's result (patches, grey values,
# network, optimisation, scoring, metrics): a resumed run must have been made by the same code.
TRAINING_CODE_FILES = (
    "core/training.py",
    "core/cohort.py",
    "core/imaging.py",
    "core/patches.py",
    "core/lattice.py",
    "core/preprocess.py",
    "core/inference.py",
    "core/clinical.py",
    "core/metrics.py",
    "models/resnet.py",
)
CONTROL_NOTE = (
    "permuted-label control: the patients' labels were shuffled before cross-validation, so every "
    "AUC here should sit near 0.5; no deployable model was written"
)
PATCH_NOTE = "patch-level figures are secondary: the patches of one patient are not independent"
DEPLOYABLE_KINDS = ("final", "ensemble")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training / cross-validation run (paper defaults).

    ``data_source`` is what the command line states about the images ("patients" or
    "synthetic"); ``None`` leaves it to the manifest's ``data_source`` column, and a run
    with neither is refused. ``model_name`` ``None`` derives a name from the data.
    """

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
    data_source: str | None = None
    model_name: str | None = None
    deployable: str = "final"  # "final": one network trained on all patients; "ensemble": the K fold networks


@dataclass
class PatientPatches:
    """One patient's material: (N, P, P) uint8 patches (grey × 255), the whole grid."""

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
    train_patches_per_s: float | None = 0.0  # None: resumed after its last epoch, nothing timed
    seconds: float = 0.0


@dataclass(frozen=True)
class RunFingerprint:
    """What a run's result depends on, in three parts, so a refused resume can say which differs.

    Attributes:
        data: sha256 over the patients' content hashes in manifest order.
        settings: sha256 of the TrainConfig (less device and names), preprocessing and training data kind.
        code: sha256 of :data:`TRAINING_CODE_FILES`.
        patients: patient key → :func:`core.cohort.content_sha256`, manifest order.
    """

    data: str
    settings: str
    code: str
    patients: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


# ---------------------------------------------------------------- what the run is


def resolve_data_source(manifest_source: str | None, stated: str | None) -> str:
    """The data source ("patients" or "synthetic") from the manifest column and/or ``--data-source``.

    Raises:
        DataSourceError: neither says, one says something else, or they disagree.
    """
    for value in (manifest_source, stated):
        if value is not None and value not in DATA_SOURCES:
            raise DataSourceError(f"The data source must be {' or '.join(DATA_SOURCES)}, not {value!r}.")
    if manifest_source is None and stated is None:
        raise DataSourceError(
            "The manifest does not say whether its images are of real patients or synthetic: add a data_source "
            "column (patients or synthetic) or pass --data-source patients|synthetic, so the model's card says it."
        )
    if manifest_source is not None and stated is not None and manifest_source != stated:
        raise DataSourceError(
            f"The manifest's data_source says {manifest_source} but --data-source says {stated}; "
            "correct whichever is wrong."
        )
    return str(manifest_source or stated)


def training_data_kind(data_source: str, permute_labels: bool) -> str:
    """The card's ``training_data`` (a :data:`core.provenance.TRAINING_DATA_KINDS` value)."""
    return PERMUTED_CONTROL if permute_labels else DATA_SOURCES[data_source]


def check_train_config(tc: TrainConfig) -> None:
    """Refuse settings no run can use, before any work starts.

    Raises:
        UserFacingError: one sentence naming the setting and the values it may take.
    """
    problems = [
        (tc.folds >= 2, f"--folds must be at least 2 (got {tc.folds})"),
        (tc.epochs >= 1, f"--epochs must be at least 1 (got {tc.epochs})"),
        # BatchNorm cannot train on a batch of one patch
        (tc.batch_size >= 2, f"--batch-size must be at least 2 (got {tc.batch_size})"),
        (math.isfinite(tc.lr) and tc.lr > 0, f"--lr must be a positive number (got {tc.lr:g})"),
        (
            tc.max_patches_per_patient is None or tc.max_patches_per_patient >= 1,
            f"--max-patches-per-patient must be at least 1 (got {tc.max_patches_per_patient})",
        ),
        (
            tc.deployable in DEPLOYABLE_KINDS,
            f"--deploy must be {' or '.join(DEPLOYABLE_KINDS)} (got {tc.deployable!r})",
        ),
    ]
    for ok, sentence in problems:
        if not ok:
            raise UserFacingError(f"{sentence}; nothing was trained.")


def check_fold_count(labels: Sequence[int], folds: int) -> None:
    """Every validation fold needs a patient of each outcome, or its AUC is undefined.

    Raises:
        UserFacingError: fewer patients of one outcome than folds.
    """
    with_event, without = sum(1 for v in labels if v), sum(1 for v in labels if not v)
    if min(with_event, without) < folds:
        raise UserFacingError(
            f"{folds} folds need at least {folds} patients with and {folds} without early recurrence; the manifest "
            f"has {with_event} with and {without} without. Use fewer folds (--folds) or more patients."
        )


def check_control_folder(out: Path) -> None:
    """Refuse a permuted-label control in a folder whose name does not say "control".

    Raises:
        ControlRunError: with a suggested folder name.
    """
    if "control" not in out.name.lower():
        suggestion = out.with_name(f"{out.name or 'run'}-control")
        raise ControlRunError(
            f"A permuted-label run is a control, not a model, and its folder must say so: use --out {suggestion}."
        )


def default_model_name(training_data: str) -> str:
    return "ResNet50 patch model" if training_data == REAL_PATIENTS else f"ResNet50 patch model ({training_data})"


# ---------------------------------------------------------------- fingerprints


def data_fingerprint(patients: Sequence[CohortPatient]) -> tuple[str, dict[str, str]]:
    """(sha256 of the cohort, key → per-patient content sha256), patients in manifest order."""
    per_patient = {p.key: content_sha256(p) for p in patients}
    blob = json.dumps(list(per_patient.items()))
    return hashlib.sha256(blob.encode()).hexdigest(), per_patient


def settings_fingerprint(tc: TrainConfig, cfg: PreprocessConfig, training_data: str) -> str:
    """sha256 of everything set by hand that changes the result.

    Leaves out the device, the model name and the kind of deployable model (they change no
    cross-validation number) and the stated ``data_source`` (a repeated ``--data-source`` that agrees with the manifest changes
    nothing); the resolved ``training_data`` kind goes in instead.
    """
    keys = {k: v for k, v in asdict(tc).items() if k not in {"device", "model_name", "data_source", "deployable"}}
    blob = json.dumps([keys, cfg.to_dict(), training_data], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def code_fingerprint(files: Sequence[str] = TRAINING_CODE_FILES, root: Path | None = None) -> str:
    """sha256 over the named source files (path and bytes) under ``root`` (default: this checkout), in order."""
    root = root if root is not None else ROOT
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    return digest.hexdigest()


def run_fingerprint(
    patients: Sequence[CohortPatient], tc: TrainConfig, cfg: PreprocessConfig, training_data: str
) -> RunFingerprint:
    data, per_patient = data_fingerprint(patients)
    return RunFingerprint(data, settings_fingerprint(tc, cfg, training_data), code_fingerprint(), per_patient)


def resume_mismatch(previous: dict[str, Any], current: RunFingerprint) -> str | None:
    """What differs between a folder's ``run.json`` and this run, in words; ``None`` when nothing does."""
    if not {"data", "settings", "code"} & previous.keys():
        return "was written by an older version of this tool"
    parts = []
    if previous.get("data") != current.data:
        parts.append(f"data ({_first_changed_patient(previous.get('patients') or {}, current.patients)})")
    if previous.get("settings") != current.settings:
        parts.append("settings")
    if previous.get("code") != current.code:
        parts.append("code (a training source file changed)")
    if not parts:
        return None
    return "has different " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])


def _first_changed_patient(previous: dict[str, str], current: dict[str, str]) -> str:
    for key, digest in current.items():
        if key not in previous:
            return f"patient {key} is new"
        if previous[key] != digest:
            return f"patient {key}'s image, mask, label, N category or calibration changed"
    for key in previous:
        if key not in current:
            return f"patient {key} was removed"
    return "the order of the patients changed"


def check_resume(out: Path, current: RunFingerprint) -> None:
    """Refuse to resume into ``out`` when the run recorded there (``run.json``) differs from this one.

    Raises:
        ResumeMismatchError: one sentence naming what differs (data / settings / code).
    """
    stamp = out / "run.json"
    if stamp.exists():
        difference = resume_mismatch(json.loads(stamp.read_text()), current)
        if difference is not None:
            raise ResumeMismatchError(
                f"{out} holds a run that {difference}; choose another --out or delete that folder to start again."
            )


def record_run(out: Path, current: RunFingerprint) -> None:
    """Write ``run.json`` atomically (other ranks may be reading it in :func:`check_resume`)."""
    with replaced_on_success(out / "run.json") as tmp:
        tmp.write_text(json.dumps(current.to_json(), indent=2))


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
    show_progress: bool = True,
) -> list[PatientPatches]:
    """Cut every patient's whole patch grid, from the calibrated slice, as the dashboard would.

    Raises:
        ManifestError: listing the patients whose outline yields no patch.
    """
    out, problems = [], []
    for patient, label in tqdm(list(zip(patients, labels, strict=True)), desc="patches", disable=not show_progress):
        ct = load_calibrated_image(patient)
        try:
            _, patches = cut_lattice(model_grey(ct, cfg), load_mask(patient.mask_path), ct.spacing_mm, cfg)
        except RoiError as error:
            problems.append(f"{patient.key}: {error}")
            continue
        out.append(PatientPatches(patient.key, int(label), patient.n_category, patient.tumour_size_mm, patches))
    if problems:
        raise ManifestError(problems)
    return out


_DRAW_STREAM = 1  # keeps the draws' generators apart from the epoch's order / augmentation one ([seed, epoch])


def epoch_draw(
    data: Sequence[PatientPatches], max_patches: int | None, seed: int, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """What one epoch trains on: ((M, P, P) uint8 patches, (M,) int64 labels), patients in ``data`` order.

    At most ``max_patches`` patches per patient, a fresh seeded draw every epoch, so over a
    run the networks see most of a large patient's grid rather than the same subset every
    epoch. The draw for a patient depends on (seed, epoch, patient key) alone, so it is the
    same on every DDP rank and after a resume. ``None`` takes every patch.
    """
    patches, labels = [], []
    for patient in data:
        chosen, n = patient.patches, _drawn(len(patient.patches), max_patches)
        if n < len(chosen):
            rng = np.random.default_rng([seed, epoch, _DRAW_STREAM, zlib.crc32(patient.key.encode())])
            chosen = chosen[np.sort(rng.choice(len(chosen), n, replace=False))]
        patches.append(chosen)
        labels.append(np.full(len(chosen), patient.label, dtype=np.int64))
    return np.concatenate(patches), np.concatenate(labels)


def patches_per_epoch(data: Sequence[PatientPatches], max_patches: int | None) -> int:
    """How many patches :func:`epoch_draw` yields for ``data`` each epoch."""
    return sum(_drawn(len(p.patches), max_patches) for p in data)


def _drawn(n_patches: int, max_patches: int | None) -> int:
    """How many of a patient's ``n_patches`` an epoch draws: all of them, or the cap when smaller."""
    return n_patches if max_patches is None else min(n_patches, max_patches)


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply one of the 8 symmetries of the square to each (P, P) patch."""
    out = np.empty_like(batch)
    for i, op in enumerate(rng.integers(0, 8, size=len(batch))):
        patch = np.rot90(batch[i], k=int(op) % 4)
        out[i] = patch[:, ::-1] if op >= 4 else patch
    return out


# ---------------------------------------------------------------- training


def grad_scaler_enabled(autocast_dtype: torch.dtype | None) -> bool:
    """Whether training needs loss scaling: only float16, whose 5-bit exponent flushes small gradients to 0.

    bfloat16 has float32's exponent range and fp32 needs nothing.
    """
    return autocast_dtype == torch.float16


def make_grad_scaler(device: torch.device, autocast_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is a pass-through unless the autocast dtype is float16."""
    return torch.amp.GradScaler(device.type, enabled=grad_scaler_enabled(autocast_dtype))


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One optimisation step through ``scaler``.

    With scaling on, the loss is multiplied by the scale before ``backward`` and the gradients
    unscaled before the step; a step whose gradients overflowed is skipped and the scale lowered.
    With scaling off this is ``loss.backward(); optimizer.step()``.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def loss_is_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all ranks must stop together, or DDP would hang)."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world()[1] > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def train_network(
    data: Sequence[PatientPatches],
    cfg: PreprocessConfig,
    tc: TrainConfig,
    device: torch.device,
    seed: int,
    state_path: Path | None = None,
    desc: str = "train",
    share: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.nn.Module, float | None]:
    """Train a fresh ResNet50 on ``data`` (each epoch :func:`epoch_draw`'s patches); returns it and patches/s.

    The patches/s is None when ``state_path`` held a finished network, so this call trained nothing.

    Resumable: after every epoch rank 0 writes ``state_path`` (weights, optimizer, grad
    scaler, epoch; after the last epoch weights and epoch only); a later call with the same
    path continues from there. ``share`` is
    (start, width) of this network in the whole run, for the build's progress file
    (:func:`core.demo_build.report_progress`).

    Raises:
        TrainingDivergedError: the loss became NaN or infinite (naming ``desc``, epoch and batch).
    """
    rank, size = world()
    network = build_resnet50(num_classes=len(cfg.labels), seed=seed).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=tc.lr)
    autocast_dtype = resolve_autocast(device, "auto")
    scaler = make_grad_scaler(device, autocast_dtype)
    start_epoch = _resume(state_path, network, optimizer, scaler)
    model: torch.nn.Module = network
    if size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    seen, busy = 0, 0.0
    # without a cap every epoch takes every patch: concatenate the cohort once, not once per epoch
    every_patch = epoch_draw(data, None, seed, 0) if tc.max_patches_per_patient is None else None
    for epoch in range(start_epoch, tc.epochs):
        model.train()
        if every_patch is None:
            patches, labels = epoch_draw(data, tc.max_patches_per_patient, seed, epoch)
        else:
            patches, labels = every_patch
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
            if not loss_is_finite(loss):
                raise TrainingDivergedError(
                    f"Training stopped in {desc}, epoch {epoch + 1}, batch {b + 1}: the loss became "
                    f"{loss.item():g}; lower the learning rate (--lr, now {tc.lr:g}) or check the images and masks."
                )
            backward_and_step(loss, optimizer, scaler)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if rank == 0 and b % 10 == 0:
                done = (epoch + (b + 1) / n_batches) / tc.epochs
                report_progress(f"{desc}, epoch {epoch + 1}/{tc.epochs}", share[0] + share[1] * done)
            seen += len(index) * size
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        busy += time.perf_counter() - started
        if state_path is not None and rank == 0:
            finished = epoch + 1 == tc.epochs
            _save_state(state_path, network, None if finished else optimizer, scaler, epoch + 1)
        barrier()
    network.eval()
    return network, (seen / busy if busy > 0 else None)


def _resume(
    state_path: Path | None, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> int:
    if state_path is None or not state_path.exists():
        return 0
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"])
    if "optimizer" in state:  # absent once the network is finished: no step is left to take
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
    return int(state["epoch"])


def _save_state(
    path: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler,
    epoch: int,
) -> None:
    """Write the resume state atomically; ``optimizer`` None (a finished network) writes weights and epoch only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"model": network.state_dict(), "epoch": epoch}
    if optimizer is not None:
        # Adam's two moments are twice the weights (a 283 MB file instead of 94 MB for ResNet50)
        state["optimizer"] = optimizer.state_dict()
        state["scaler"] = scaler.state_dict()  # {} when scaling is off
    with replaced_on_success(path) as tmp:
        torch.save(state, tmp)


# ---------------------------------------------------------------- evaluation


def patch_probabilities(
    network: Callable[[torch.Tensor], torch.Tensor],
    data: Sequence[PatientPatches],
    cfg: PreprocessConfig,
    device: torch.device,
    desc: str = "this network",
) -> list[np.ndarray]:
    """(N_i,) float64 probabilities of early recurrence for each patient's patches.

    Scored as :func:`core.analysis.analyze_case` scores a case with the default engine: fp32,
    channels-last, batches of :data:`~core.inference.INFERENCE_BATCH`, so a validation
    patient's number is the dashboard's number for that fold's model.

    Raises:
        TrainingDivergedError: a probability is NaN (weights that blew up without a non-finite
            training loss, e.g. BatchNorm running statistics that overflowed).
    """
    probs = [
        predict_patches(network, p.patches, cfg, batch_size=INFERENCE_BATCH, device=device, precision="fp32")
        for p in data
    ]
    broken = [p.key for p, pr in zip(data, probs, strict=True) if not np.all(np.isfinite(pr))]
    if broken:
        raise TrainingDivergedError(
            f"Training of {desc} diverged: its network gives NaN probabilities (first for patient {broken[0]}); "
            "lower the learning rate (--lr) or check the images and masks."
        )
    return probs


def evaluate(data: Sequence[PatientPatches], probs: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    """(patient-level, patch-level) metrics, scored as the dashboard scores a case.

    A patient's score is :func:`core.inference.aggregate` of its patch probabilities, predicted
    early recurrence at :data:`~core.inference.CASE_THRESHOLD`; patches at
    :data:`~core.inference.PATCH_THRESHOLD`.
    """
    patient_scores = np.array([aggregate(p).probability for p in probs])
    patient_labels = np.array([d.label for d in data])
    patch_scores = np.concatenate(probs)
    patch_labels = np.concatenate([np.full(len(p), d.label) for d, p in zip(data, probs, strict=True)])
    return (
        binary_metrics(patient_labels, patient_scores, threshold=CASE_THRESHOLD),
        binary_metrics(patch_labels, patch_scores, threshold=PATCH_THRESHOLD),
    )


def clinical_scores(train: Sequence[PatientPatches], validation: Sequence[PatientPatches]) -> list[float | None]:
    """Out-of-fold N-category logistic regression risks (``None`` where N is unknown)."""
    known = [p for p in train if p.n_category in N_CATEGORIES]
    if len({p.label for p in known}) < 2:
        return [None] * len(validation)
    model = NCategoryLogisticRegression().fit(
        n1_indicator([p.n_category for p in known]), np.array([p.label for p in known])
    )
    return [
        float(model.predict_proba_n1(n1_indicator([p.n_category]))[0]) if p.n_category in N_CATEGORIES else None
        for p in validation
    ]


def out_of_fold_aucs(patients: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled out-of-fold patient-level AUCs with DeLong 95% CIs.

    Args:
        patients: one row per patient (``label``, ``dl_probability``, ``clinical_probability`` or
            ``None``), each scored by the fold in which it was held out.

    Returns:
        ``all_patients``: the ResNet50 on every patient. ``same_patients``: the ResNet50 and the
        N-category model on the patients who have a clinical risk (known N), so the two AUCs
        are comparable.
    """
    labels = np.array([p["label"] for p in patients], dtype=np.int64)
    dl = delong_auc(labels, np.array([p["dl_probability"] for p in patients], dtype=np.float64))
    known = [p for p in patients if p["clinical_probability"] is not None]
    known_labels = np.array([p["label"] for p in known], dtype=np.int64)
    same_dl = delong_auc(known_labels, np.array([p["dl_probability"] for p in known], dtype=np.float64))
    same_clinical = delong_auc(known_labels, np.array([p["clinical_probability"] for p in known], dtype=np.float64))
    return {
        "all_patients": {"n": dl.n, "events": dl.n_positive, "dl_auc": dl.auc, "dl_auc_ci": dl.ci},
        "same_patients": {
            "n": same_dl.n,
            "events": same_dl.n_positive,
            "dl_auc": same_dl.auc,
            "dl_auc_ci": same_dl.ci,
            "clinical_auc": same_clinical.auc,
            "clinical_auc_ci": same_clinical.ci,
        },
        "ci_method": CI_METHOD,
    }


def coverage(tc: TrainConfig) -> dict[str, str]:
    """Which patients (and patches) each figure of the run rests on, in words."""
    fitted = (
        f"; the network was fitted on a fresh draw of at most {tc.max_patches_per_patient} of them per patient each epoch"
        if tc.max_patches_per_patient is not None
        else ""
    )
    return {
        "out_of_fold_patient_level": "every patient once, scored by the fold in which it was held out, on all its patches",
        "same_patients": "the patients with a known N category (N0/N1): both models scored on exactly these",
        "validation": f"each fold's held-out patients, on all their patches; mean ± SD over the {tc.folds} folds",
        "train": f"each fold's training patients, on all their patches{fitted}; mean ± SD over the {tc.folds} folds",
        "table4": "every patient once, from the fold in which it was held out, on all its patches",
    }


# ---------------------------------------------------------------- the whole run


@dataclass(frozen=True)
class _Run:
    """What every fold of one run shares."""

    out: Path
    tc: TrainConfig
    cfg: PreprocessConfig
    device: torch.device
    training_data: str
    model_name: str


def cross_validate(manifest: Path, out: Path, tc: TrainConfig, cfg: PreprocessConfig) -> dict[str, Any]:
    """Validate the manifest, run k-fold CV by patient, write the deployable model and the report.

    Files under ``out``: ``run.json`` (fingerprint), ``folds.csv``, ``fold{k}/model.pt`` and
    ``result.json`` per fold (``fold{k}/state.pt`` only until its result is written), ``model.pt`` (``tc.deployable`` "final": one network trained on all
    patients after CV; "ensemble": the K fold networks in one checkpoint, no further training),
    ``metrics.json``, ``report.md``, ``roc.html`` / ``roc.png``. Re-running with the same
    arguments resumes (also into the other kind of deployable model: the folds are reused).
    A permuted-label control (``tc.permute_labels``) must go to a folder named "…control…"
    and writes no ``model.pt`` at all.

    Raises:
        ControlRunError, DataSourceError, ManifestError, ResumeMismatchError,
        TrainingDivergedError: each with one sentence saying what to do.
    """
    check_train_config(tc)
    device = resolve_device(tc.device)
    init_distributed(device)
    rank, size = world()
    if tc.permute_labels:
        check_control_folder(out)
    torch.manual_seed(tc.seed)
    patients = read_manifest(manifest, cfg)
    data_source = resolve_data_source(manifest_data_source(patients), tc.data_source)
    training_data = training_data_kind(data_source, tc.permute_labels)
    run = _Run(out, tc, cfg, device, training_data, tc.model_name or default_model_name(training_data))
    labels = [p.label for p in patients]
    check_fold_count(labels, tc.folds)
    if tc.permute_labels:
        labels = [int(v) for v in np.random.default_rng([tc.seed, 99]).permutation(labels)]
    folds = assign_folds([p.key for p in patients], labels, tc.folds, tc.seed)
    fingerprint = run_fingerprint(patients, tc, cfg, training_data)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, fingerprint)
    data = build_patient_patches(patients, labels, cfg, show_progress=rank == 0)
    if rank == 0:  # recorded once the patches exist, so a manifest fixed after a failed start is no mismatch
        record_run(out, fingerprint)
        write_folds(out / "folds.csv", folds)
    results = [_run_fold(k, data, folds, run) for k in range(tc.folds)]
    deployable = tc.final_model and not tc.permute_labels  # a control's weights are never a model
    final_throughput = None
    if deployable and tc.deployable == "final":
        network, final_throughput = train_network(
            data,
            cfg,
            tc,
            device,
            seed=tc.seed + 1000,
            state_path=out / "final" / "state.pt",
            desc="the final model",
            share=(tc.folds / _networks_to_train(tc), 1 / _networks_to_train(tc)),
        )
    summary = summarise(results, data, folds, run, size, final_throughput, DATA_SOURCES[data_source])
    if rank == 0:
        from core.report import write_report

        if deployable and tc.deployable == "ensemble":
            summary["model_sha256"] = save_fold_ensemble(out, tc.folds, cfg, _card(summary, run))
        elif deployable:
            summary["model_sha256"] = save_checkpoint(out / "model.pt", network, cfg, _card(summary, run))
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        write_report(out, summary)
    barrier()
    return summary


def save_fold_ensemble(out: Path, folds: int, cfg: PreprocessConfig, card: dict[str, Any]) -> str:
    """Write the K fold networks (``fold{k}/model.pt``) as one ensemble checkpoint ``out/model.pt``; returns its sha256."""
    networks = [load_checkpoint(out / f"fold{k + 1}" / "model.pt", require_allowed=False).network for k in range(folds)]
    return save_checkpoint(out / "model.pt", networks, cfg, card, member_names=[f"fold {k + 1}" for k in range(folds)])


def _networks_to_train(tc: TrainConfig) -> int:
    """The fold networks, plus the final one when the deployable model is trained after CV."""
    final = tc.final_model and not tc.permute_labels and tc.deployable == "final"
    return tc.folds + int(final)


def _run_fold(
    k: int,
    data: Sequence[PatientPatches],
    folds: dict[str, int],
    run: _Run,
) -> FoldResult:
    """Train on the other folds' patients, then score both them and fold ``k``'s patients on all their patches."""
    rank, _ = world()
    tc = run.tc
    done = run.out / f"fold{k + 1}" / "result.json"
    state = run.out / f"fold{k + 1}" / "state.pt"
    if done.exists():
        if rank == 0:
            _drop_resume_state(state)  # left by a run stopped between writing the result and deleting it
        barrier()
        return FoldResult(**json.loads(done.read_text()))
    started = time.perf_counter()
    train = [p for p in data if folds[p.key] != k]
    validation = [p for p in data if folds[p.key] == k]
    network, throughput = train_network(
        train,
        run.cfg,
        tc,
        run.device,
        seed=tc.seed + k,
        state_path=state,
        desc=f"fold {k + 1}/{tc.folds}",
        share=(k / _networks_to_train(tc), 1 / _networks_to_train(tc)),
    )
    result = FoldResult(fold=k + 1, train_patches_per_s=throughput)
    if rank == 0:
        where = f"fold {k + 1}/{tc.folds}"
        train_probs = patch_probabilities(network, train, run.cfg, run.device, where)
        val_probs = patch_probabilities(network, validation, run.cfg, run.device, where)
        result.patient_level["train"], result.patch_level["train"] = evaluate(train, train_probs)
        result.patient_level["validation"], result.patch_level["validation"] = evaluate(validation, val_probs)
        clinical = clinical_scores(train, validation)
        result.validation_patients = [
            _patient_row(p, aggregate(pr), c) for p, pr, c in zip(validation, val_probs, clinical, strict=True)
        ]
        result.seconds = time.perf_counter() - started
        if run.training_data != PERMUTED_CONTROL:
            save_checkpoint(
                run.out / f"fold{k + 1}" / "model.pt",
                network,
                run.cfg,
                make_card(f"{run.model_name}, fold {k + 1}", f"fold {k + 1} of {tc.folds}", run.training_data),
            )
        with replaced_on_success(done) as tmp:
            tmp.write_text(json.dumps(asdict(result), default=_json_default))
        # a fold with its result on disk is never trained again (see above): its resume state is dead weight
        _drop_resume_state(state)
    barrier()
    return FoldResult(**json.loads(done.read_text())) if rank != 0 else result


def _drop_resume_state(state_path: Path) -> None:
    """Delete a finished fold's resume state (283 MB for ResNet50) and any half-written copy of it."""
    state_path.unlink(missing_ok=True)
    beside(state_path).unlink(missing_ok=True)


def _patient_row(patient: PatientPatches, risk: CaseRisk, clinical: float | None) -> dict[str, Any]:
    """One validation patient's line of Table 4: the dashboard's case risk and its patch votes."""
    # a patch is right when its vote (p ≥ PATCH_THRESHOLD) matches the patient's label
    patch_accuracy = risk.share_above if patient.label else 1.0 - risk.share_above
    return {
        "patient_key": patient.key,
        "label": patient.label,
        "n_category": patient.n_category,
        "tumour_size_mm": patient.tumour_size_mm,
        "dl_probability": risk.probability,
        "predicted": int(risk.probability >= CASE_THRESHOLD),
        "patch_accuracy": patch_accuracy,
        "n_patches": risk.n_patches,
        "clinical_probability": clinical,
    }


def summarise(
    results: Sequence[FoldResult],
    data: Sequence[PatientPatches],
    folds: dict[str, int],
    run: _Run,
    processes: int,
    final_throughput: float | None,
    data_description: str,
) -> dict[str, Any]:
    """metrics.json content: the pooled out-of-fold AUCs first, then folds (mean ± SD), patient level first."""
    levels: dict[str, Any] = {}
    for level in ("patient_level", "patch_level"):
        levels[level] = {
            split: mean_sd([getattr(r, level)[split] for r in results]) for split in ("train", "validation")
        }
    patients = [row | {"fold": r.fold} for r in results for row in r.validation_patients]
    accuracies = np.array([p["patch_accuracy"] for p in patients])
    q1 = float(np.quantile(accuracies, 0.25)) if len(accuracies) else math.nan
    for p in patients:
        p["first_quartile"] = bool(p["patch_accuracy"] <= q1)
    control = run.training_data == PERMUTED_CONTROL
    return {
        "training_data": run.training_data,
        "control": CONTROL_NOTE if control else None,
        "out_of_fold_patient_level": out_of_fold_aucs(patients),
        "patient_rule": PATIENT_RULE,
        "covers": coverage(run.tc),
        "model_name": run.model_name,
        "config": asdict(run.tc),
        "preprocess": run.cfg.to_dict(),
        "cohort": {
            "patients": len(data),
            "early_recurrence": int(sum(p.label for p in data)),
            "known_n_category": sum(1 for p in data if p.n_category in N_CATEGORIES),
            "patches": int(sum(len(p.patches) for p in data)),
            "training_patches_per_epoch": patches_per_epoch(data, run.tc.max_patches_per_patient),
            "data_source": data_description,
            "permuted_labels": run.tc.permute_labels,
        },
        "summary": levels,
        "folds": [asdict(r) for r in results],
        "table4": {"first_quartile_patch_accuracy": q1, "patients": patients},
        "fold_assignment": folds,
        "throughput": {
            "train_patches_per_s_per_fold": [r.train_patches_per_s for r in results],
            "final_train_patches_per_s": final_throughput,
            "processes": processes,
            "device": str(run.device),
        },
    }


def _card(summary: dict[str, Any], run: _Run) -> dict[str, Any]:
    """The deployable model's card: provenance from the data, the pooled out-of-fold AUC first."""
    if run.training_data == SYNTHETIC_PHANTOMS:
        provenance = "trained on synthetic phantoms — not for clinical use"
    elif run.training_data == REAL_PATIENTS:
        provenance = f"trained on {summary['cohort']['patients']} patients of the local cohort"
    else:  # never reached: controls write no model
        raise ValueError(f"no deployable model is made from {run.training_data!r}")
    if run.tc.deployable == "ensemble":
        extra: dict[str, Any] = {
            "deployable": (
                f"the {run.tc.folds} fold networks of this cross-validation, deployed together (each trained on "
                f"{run.tc.folds - 1}/{run.tc.folds} of the patients; no separate final training); the case risk is "
                "their mean"
            ),
            "ensemble": {
                "members": run.tc.folds,
                "rule": ENSEMBLE_RULE,
                "spread": SPREAD_RULE,
                "note": (
                    "the out-of-fold figures score each patient with the one fold network that did not see it; "
                    "the ensemble has seen every patient, and averages those fold networks"
                ),
            },
        }
    else:
        extra = {"deployable": "one ResNet50 trained on all patients after cross-validation (same recipe)"}
    return make_card(
        run.model_name,
        provenance,
        run.training_data,
        cohort=summary["cohort"],
        **extra,
        cv_metrics={
            "out_of_fold_patient_level": summary["out_of_fold_patient_level"],
            "patient_level": summary["summary"]["patient_level"],
            "patch_level": summary["summary"]["patch_level"],
            "covers": summary["covers"],
            "patient_rule": PATIENT_RULE,
            "note": PATCH_NOTE,
        },
        training={k: v for k, v in summary["config"].items() if k != "device"},
    )


def write_folds(path: Path, folds: dict[str, int]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_key", "fold"])
        for key, fold in folds.items():
            writer.writerow([key, fold + 1])


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
