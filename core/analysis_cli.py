"""``python -m core analyze``: the Analyze page's computation for scripting, on the same code path.

Reads a slice and an outline PNG, applies what the user states about the image (spacing,
export window) exactly as the page does, runs :func:`core.analysis.analyze_case`, and
prints the deep-learning number and the clinical risk (text, or one JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.analysis import CaseAnalysis, analyze_case, clinical_risk_for
from core.clinical import N_CHOICES, UNKNOWN_N, ClinicalRisk
from core.errors import RoiError, UserFacingError
from core.imaging import CtSlice, calibrate, load_slice
from core.modelcard import patient_level_auc
from core.provenance import RESEARCH_NOTICE
from models.checkpoint import LoadedModel, configured_model_path, load_checkpoint


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` sub-command."""
    p = sub.add_parser("analyze", help="analyse one slice with an outline PNG, as the Analyze page does")
    p.add_argument("image", help="CT slice: DICOM, PNG or JPEG")
    p.add_argument("--outline", required=True, help="PNG mask of the slice's size (non-zero = tumour)")
    p.add_argument("--n-category", default=UNKNOWN_N, choices=N_CHOICES, help="UICC N category (default: unknown)")
    p.add_argument("--spacing-mm", type=float, default=None, help="pixel spacing (mm/px) when the file has none")
    p.add_argument("--export-window", default=None, help="LEVEL,WIDTH in HU a PNG/JPEG export was made with")
    p.add_argument("--model", default=None, help="checkpoint (default: $ICCA_MODEL_PATH or models/weights/model.pt)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_analyze)


def parse_window(text: str | None) -> tuple[float, float] | None:
    """ "60,160" → (60.0, 160.0)."""
    if text is None:
        return None
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise UserFacingError(f"--export-window takes LEVEL,WIDTH in HU, e.g. 60,160; got {text!r}.") from None
    return level, width


def read_outline_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool outline from a PNG mask (non-zero = tumour) of the slice's size."""
    if not path.is_file():
        raise RoiError(f"No outline file at {path}; check the path.")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise RoiError(f"The outline {path.name} is not a readable PNG image; save the mask as PNG.")
    if mask.shape != shape:
        raise RoiError(
            f"The outline is {mask.shape[1]}×{mask.shape[0]} px but the slice is {shape[1]}×{shape[0]} px; "
            "use the mask drawn on this slice."
        )
    if not mask.any():
        raise RoiError(f"The outline {path.name} is empty; it must mark the tumour with non-zero pixels.")
    return mask > 0


def result_json(
    ct: CtSlice, analysis: CaseAnalysis, clinical: ClinicalRisk | None, n_category: str, model: LoadedModel
) -> dict[str, Any]:
    """The analysis as plain JSON types; probabilities are fractions in [0, 1], lengths in mm."""
    dl = analysis.dl_risk
    cv = patient_level_auc(model.card)
    return {
        "dl": {
            "mean_patch_probability": dl.probability,
            "rule": dl.rule,
            "n_patches": dl.n_patches,
            "share_of_patches_at_or_above_threshold": dl.share_above,
            "patch_threshold": dl.threshold,
            "calibrated": False,
            "cv_patient_level_auc": None
            if cv is None
            else {"auc": cv.auc, "ci_95": cv.ci, "n": cv.n, "events": cv.events},
        },
        "clinical": {
            "n_category": n_category,
            "probability": None if clinical is None else clinical.probability,
            "ci_95": None if clinical is None else [clinical.ci_low, clinical.ci_high],
        },
        "image": {
            "source": ct.source_kind,
            "spacing_mm": list(ct.spacing_mm) if ct.spacing_mm else None,
            "spacing_source": ct.spacing_source,  # "header" or "user"
            "export_window": list(ct.export_window) if ct.export_window else None,
        },
        "outline": {
            "area_px": analysis.coverage.outline_px,
            "area_mm2": None
            if analysis.coverage.pixel_area_mm2 is None
            else analysis.coverage.outline_px * analysis.coverage.pixel_area_mm2,
            "uncovered_share": analysis.coverage.uncovered_share,
        },
        "model": {
            "name": model.name,
            "sha256": model.sha256,
            "training_data": model.training_data,
            "warning": model.weights_warning,
        },
        "notice": RESEARCH_NOTICE,
    }


def cmd_analyze(args: argparse.Namespace) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise UserFacingError(f"No file at {image}; check the path.")
    raw = load_slice(image.read_bytes(), image.name)
    ct = calibrate(raw, args.spacing_mm, parse_window(args.export_window))
    ignored = [
        flag
        for flag, given, used in (
            ("--spacing-mm", args.spacing_mm is not None, ct.spacing_source == "user"),
            ("--export-window", args.export_window is not None, ct.export_window is not None),
        )
        if given and not used
    ]
    if ignored:  # the header already says: it wins, and the user should know
        print(f"note: {' and '.join(ignored)} ignored; the DICOM header gives them.", file=sys.stderr)
    mask = read_outline_png(Path(args.outline), ct.shape)
    model = load_checkpoint(Path(args.model) if args.model else configured_model_path())
    analysis = analyze_case(ct, mask, model)
    clinical = clinical_risk_for(args.n_category)
    payload = result_json(ct, analysis, clinical, args.n_category, model)
    if args.json:
        print(json.dumps(payload))
        return 0
    print(f"model            {model.name} (sha256 {model.sha256[:12]}; training data: {model.training_data})")
    if model.weights_warning:
        print(f"warning          {model.weights_warning}")
    print(f"deep learning    mean patch probability {analysis.dl_risk.probability:.1%} (uncalibrated)")
    print(
        f"                 over {analysis.dl_risk.n_patches} patches, {analysis.dl_risk.share_above:.0%} ≥ "
        f"{analysis.dl_risk.threshold:g}"
    )
    if clinical is None:
        print("clinical         not available (N category unknown)")
    else:
        print(
            f"clinical         {clinical.probability:.1%} (95% CI {clinical.ci_low:.1%}–{clinical.ci_high:.1%}), "
            f"UICC {args.n_category}"
        )
    print(RESEARCH_NOTICE)
    return 0
