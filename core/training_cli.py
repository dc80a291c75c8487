"""Sub-commands for cohorts and training: ``phantom``, ``train`` and ``demo-model``."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserFacingError
from core.preprocess import PreprocessConfig, UnknownPreprocessingError
from core.provenance import DATA_SOURCES

if TYPE_CHECKING:  # core.training imports torch: the CLI loads it only when a command needs it
    from core.training import TrainConfig

# The CPU demo recipe, meant for `make demo-model` on 2 cores without BF16 (AVX2 only) in 15 minutes:
# 32-px network input (16 mm patches seen at 0.5 mm per input pixel, finer than the phantoms' 0.6–0.8 mm
# pixels and their 0.8–3 mm texture), and the deployable model is the ensemble of the 5 fold networks,
# so no sixth network is trained after cross-validation (see README for the measured time and AUC).
# Batch 64, not 32: on a 2-core AVX2 EPYC (Zen 3) a ResNet50 training step at 48 px cost 0.70 s per
# 32 patches at batch 64 against 1.04 s at batch 32 (oneDNN's convolution backward is starved by
# small batches of tiny images; 96 and 128 are no faster). The learning rate doubles with it
# (linear scaling). 10 epochs of a fresh draw of 32 patches per patient at 32 px replaced 5 epochs of one
# fixed subset at 48 px on 2026-12-03: on the demo cohort three paired runs went from a patient-level
# out-of-fold AUC of 0.764 to 0.814 on average (+0.050), no lower on two other cohort draws; not yet the
# issue's 0.85. The cost: ×1.14 the wall time under AVX2 emulation, which extrapolated from the last
# Zen 3 run lands near 16.5 minutes, over the target; other estimates range from 14 to 21 (not measured
# on a real AVX2 CPU). Tried on this recipe and not adopted, for no gain beyond run-to-run noise: BatchNorm
# statistics recomputed after the last epoch, weight averaging (SWA), 20 epochs, test-time augmentation,
# training draws weighted by each patch's share inside the outline, HU-level and contrast augmentation, AdamW,
# a narrower window (L40/W120), and patient scores weighting each patch by its share inside the outline.
# Figures for all of it: README, "Measured".
DEMO_RECIPE = {
    "patients": 41,
    "seed": 0,
    "epochs": 10,
    "batch_size": 64,
    "lr": 5e-4,
    "max_patches_per_patient": 32,
    "input_px": 32,
    "deployable": "ensemble",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the cohort and training sub-commands."""
    p = sub.add_parser("phantom", help="write a synthetic phantom cohort (DICOM + masks + manifest.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--patients", type=int, default=41)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_phantom)

    p = sub.add_parser("train", help="k-fold cross-validation by patient, then the deployable model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.00025)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-patches-per-patient", type=int, default=None)
    p.add_argument("--input-px", type=int, default=None, help="network input side (paper: 224)")
    p.add_argument("--preprocess", default=None, help="JSON file of PreprocessConfig fields (default: the paper's)")
    p.add_argument(
        "--data-source",
        choices=sorted(DATA_SOURCES),
        default=None,
        help="what the images are, for a manifest without a data_source column (written on the model card)",
    )
    p.add_argument(
        "--permute-labels",
        action="store_true",
        help="control run with shuffled patient labels: writes no model; --out must name a '…control…' folder",
    )
    p.add_argument("--no-final-model", action="store_true", help="write no deployable model (CV and report only)")
    p.add_argument(
        "--deploy",
        choices=("final", "ensemble"),
        default="final",
        help="deployable model: one network trained on all patients after CV (final, the paper's way) or the "
        "K fold networks as an ensemble (no further training; every case gets a spread across folds)",
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("demo-model", help="build the phantom cohort and train the built-in demo model")
    p.add_argument("--out", default=None, help="checkpoint path (default: the configured model path)")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument(
        "--no-engine-choice",
        action="store_true",
        help="skip ranking this machine's inference backends after training (the dashboard then runs plain fp32 until `python -m core.engine` ranks them)",
    )
    p.set_defaults(handler=cmd_demo_model)


def cmd_phantom(args: argparse.Namespace) -> int:
    from core.phantom import write_cohort

    manifest = write_cohort(Path(args.out), args.patients, args.seed)
    print(f"wrote {args.patients} phantom patients; manifest: {manifest}")
    return 0


def read_preprocess(path: Path) -> PreprocessConfig:
    """A PreprocessConfig from a JSON file of its fields, refused whole with one sentence when unusable."""
    try:
        fields = json.loads(path.read_text())
    except OSError:
        raise UserFacingError(f"No readable preprocessing file at {path}; check the --preprocess path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserFacingError(f"The preprocessing file {path.name} is not valid JSON.") from None
    if not isinstance(fields, dict):
        raise UserFacingError(f"The preprocessing file {path.name} must hold one JSON object of settings.")
    try:
        return PreprocessConfig.from_dict(fields)
    except UnknownPreprocessingError as error:
        raise UserFacingError(
            f"The preprocessing file {path.name} has settings this version does not know ({', '.join(error.fields)})."
        ) from None
    except (TypeError, ValueError) as error:
        raise UserFacingError(f"The preprocessing file {path.name} has an invalid setting ({error}).") from None


def cmd_train(args: argparse.Namespace) -> int:
    from core.training import TrainConfig, cross_validate, world

    tc = TrainConfig(
        folds=args.folds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        max_patches_per_patient=args.max_patches_per_patient,
        permute_labels=args.permute_labels,
        final_model=not args.no_final_model,
        data_source=args.data_source,
        deployable=args.deploy,
    )
    cfg = read_preprocess(Path(args.preprocess)) if args.preprocess else PreprocessConfig()
    if args.input_px is not None:
        if args.input_px < 8:
            raise UserFacingError(f"--input-px must be at least 8 (got {args.input_px}); the paper uses 224.")
        cfg = replace(cfg, input_px=args.input_px)
    summary = cross_validate(Path(args.manifest), Path(args.out), tc, cfg)
    if world()[0] == 0:
        print(json.dumps({"training_data": summary["training_data"], **summary["out_of_fold_patient_level"]}, indent=2))
        if (Path(args.out) / "model.pt").exists() and not tc.permute_labels:
            print(
                f"to score patients with it, approve it first: python -m core model allow {Path(args.out) / 'model.pt'}"
            )
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    """Build the demo model, holding the machine's build lock (a second build started meanwhile exits)."""
    from core.demo_build import BuildAlreadyRunning, build_lock

    try:
        with build_lock(Path(args.workdir)):
            return _build_demo_model(args)
    except BuildAlreadyRunning:
        print(f"a demo model build is already running on this machine ({args.workdir}/build.lock); nothing to do")
        return 0


def _build_demo_model(args: argparse.Namespace) -> int:
    from core.files import replaced_on_success
    from core.training import TrainConfig
    from models.checkpoint import allow_checkpoint, configured_model_path

    recipe = DEMO_RECIPE
    work = Path(args.workdir)
    tc = TrainConfig(
        epochs=recipe["epochs"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        seed=recipe["seed"],
        max_patches_per_patient=recipe["max_patches_per_patient"],
        # demo-model only ever trains on the phantoms it writes; their manifest says "synthetic" too,
        # and a manifest that said otherwise would be refused rather than relabelled
        data_source="synthetic",
        model_name="ResNet50 demo model (synthetic phantoms)",
        deployable=recipe["deployable"],
    )
    cfg = replace(PreprocessConfig(), input_px=recipe["input_px"])
    summary = cross_validate_demo(work, tc, cfg, recipe["patients"], recipe["seed"])
    target = Path(args.out) if args.out else configured_model_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # the dashboard polls for this file and loads it once it appears: it appears whole and approved
    with replaced_on_success(target) as partial:
        shutil.copyfile(work / "train" / "model.pt", partial)
        allow_checkpoint(partial, f"{tc.model_name}, built by make demo-model")  # by sha256, the same once moved
    pooled = summary["out_of_fold_patient_level"]["all_patients"]
    low, high = pooled["dl_auc_ci"]
    print(
        f"demo model written to {target}: an ensemble of its {tc.folds} fold networks (patient-level out-of-fold "
        f"AUC {pooled['dl_auc']:.3f}, 95% CI {low:.3f}–{high:.3f}, {pooled['n']} phantoms; report: "
        f"{work / 'train' / 'report.md'})"
    )
    if not args.no_engine_choice:
        measure_engines(cfg)
    return 0


def cross_validate_demo(work: Path, tc: TrainConfig, cfg: PreprocessConfig, patients: int, seed: int) -> dict[str, Any]:
    """Write the phantoms into ``work/cohort`` unless there, then cross-validate into ``work/train``.

    When ``work/train`` holds a build of other settings or code (an earlier recipe or version),
    which a resume must refuse, both folders are rebuilt from scratch: the phantoms too, since the
    generator may have changed with the code. Both folders are the demo build's own.
    """
    from core.errors import ResumeMismatchError
    from core.phantom import write_cohort
    from core.training import cross_validate

    manifest = work / "cohort" / "manifest.csv"
    if not manifest.exists():
        write_cohort(work / "cohort", patients, seed)
    try:
        return cross_validate(manifest, work / "train", tc, cfg)
    except ResumeMismatchError:
        print(f"{work / 'train'} holds a demo build of other settings or code: building afresh, phantoms included.")
    shutil.rmtree(work / "train")
    shutil.rmtree(work / "cohort")
    # once more from empty folders: no earlier build is left to mismatch, so this cannot come back here
    return cross_validate_demo(work, tc, cfg, patients, seed)


def measure_engines(cfg: PreprocessConfig) -> None:
    """Rank this machine's inference backends for the model's input size, once (the dashboard reuses it).

    Only the ranking: building and checking the chosen backend for each member is the
    dashboard's job at model load, in the background.
    """
    from core.engine import cached_choice, default_device, lacks_memory_figures, machine_signature, measure_machine

    cached = cached_choice(machine_signature(cfg, len(cfg.labels), default_device()))
    if cached is not None and not lacks_memory_figures(cached, default_device()):
        return  # ranked already (a ranking made before memory was measured is measured again, once)
    print("ranking this machine's inference backends once (the dashboard reuses the ranking):")
    choice = measure_machine(cfg, len(cfg.labels), log=print)
    if choice is not None:
        print(f"fastest here: {choice.ranking()[0].name} ({choice.ranking()[0].patches_per_s:.0f} patches/s)")
