"""How much the risk would move: across the fold models of an ensemble, and with the outline drawn wider or narrower.

Two questions a single number hides, answered from the same patch probabilities:

* **Fold spread** (:class:`EnsembleSpread`): the deployable model may be the K networks of
  its cross-validation; each scores the case, and the case risk is their mean.
* **Outline sensitivity** (:func:`outline_sensitivity`): the risk recomputed with the outline
  eroded and dilated by 1 and 2 mm (a disk in physical units), with a warning when the
  prediction flips within ±1 mm of the outline drawn.

Both reuse the patch cache: the offset outlines take their patches from the slice's lattice
(:mod:`core.lattice`), so an eroded outline needs no new patch at all and a dilated one only
its rim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from core.engine import Engine
from core.errors import ModelOutputError, NotCalibratedError, RoiError
from core.imaging import CtSlice, analysis_blocker
from core.inference import CASE_THRESHOLD, INFERENCE_BATCH, ProgressFn, aggregate
from core.lattice import plan_lattice
from core.patch_cache import PATCH_CACHE, PatchCache
from core.scoring import score_cells, slice_context

SENSITIVITY_OFFSETS_MM = (-2.0, -1.0, 0.0, 1.0, 2.0)  # negative: eroded (drawn tighter); positive: dilated
WARNING_WITHIN_MM = 1.0
SPREAD_RULE = "min–max of the fold models' case risks"


@dataclass(frozen=True)
class EnsembleSpread:
    """The case risk of every member of an ensemble, and their range.

    Why min–max and not a confidence interval: K is small (5), and the K fold models are
    not independent draws: any two of them share three quarters of their training patients.
    A t-interval (mean ± t·SD/√K) would claim a precision that does not exist, and a
    percentile interval of five values is their range anyway. The range needs no
    assumption and reads plainly: "each of the K models, trained on (K−1)/K of the cohort,
    gave a risk in this range". It measures how much the answer depends on which patients
    the model learnt from (model instability); it is not an interval for the patient's
    true risk. The SD is given beside it, as a description only.

    Attributes:
        names: member names ("fold 1", …).
        risks: each member's case risk (:func:`core.inference.aggregate`) over the same patches.
        mean: the ensemble's case risk. Under the mean rule, the mean of the members' risks
            equals the risk of the per-patch ensemble mean (both are the grand mean of the
            N × K probabilities): one number, whichever way it is computed.
        low, high: min and max of ``risks``. sd: their sample SD (0 for one member).
        threshold: the case decision threshold.
    """

    names: tuple[str, ...]
    risks: tuple[float, ...]
    mean: float
    low: float
    high: float
    sd: float
    threshold: float = CASE_THRESHOLD
    rule: str = SPREAD_RULE

    @property
    def k(self) -> int:
        return len(self.risks)

    @property
    def members_disagree(self) -> bool:
        """Whether some members predict early recurrence and others do not."""
        return self.low < self.threshold <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "risks": list(self.risks),
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "sd": self.sd,
            "threshold": self.threshold,
            "rule": self.rule,
            "members_disagree": self.members_disagree,
        }


def ensemble_spread(member_probabilities: np.ndarray, names: Sequence[str]) -> EnsembleSpread:
    """Spread of the members' case risks from (N, K) patch probabilities (K = len(names))."""
    if member_probabilities.ndim != 2 or member_probabilities.shape[1] != len(names):
        raise ValueError("member probabilities must be (N, K) with one name per member")
    risks = tuple(aggregate(member_probabilities[:, k]).probability for k in range(len(names)))
    return EnsembleSpread(
        names=tuple(names),
        risks=risks,
        mean=aggregate(member_probabilities.mean(axis=1)).probability,
        low=min(risks),
        high=max(risks),
        sd=float(np.std(risks, ddof=1)) if len(risks) > 1 else 0.0,
    )


def offset_outline(mask: np.ndarray, spacing_mm: tuple[float, float], offset_mm: float) -> np.ndarray:
    """The outline dilated (``offset_mm`` > 0) or eroded (< 0) by a disk of ``|offset_mm|`` mm.

    Physical units: the disk is round in millimetres whatever the pixel spacing (row, col),
    via the exact Euclidean distance between pixel centres. Dilation keeps every pixel within
    the radius of the outline; erosion keeps the pixels farther than the radius from anything
    outside it (outside the image counts as outside). Returns a (rows, cols) bool mask,
    possibly empty.
    """
    if offset_mm == 0:
        return mask.copy()
    radius = abs(float(offset_mm))
    margin = math.ceil(radius / min(spacing_mm)) + 2
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.zeros_like(mask, dtype=bool)
    r0, r1 = max(0, rows.min() - margin), min(mask.shape[0], rows.max() + 1 + margin)
    c0, c1 = max(0, cols.min() - margin), min(mask.shape[1], cols.max() + 1 + margin)
    crop = np.pad(mask[r0:r1, c0:c1].astype(bool), 1)  # a ring of background: the image's edge is outside
    if offset_mm > 0:
        kept = ndimage.distance_transform_edt(~crop, sampling=spacing_mm) <= radius
    else:
        kept = ndimage.distance_transform_edt(crop, sampling=spacing_mm) > radius
    out = np.zeros(mask.shape, dtype=bool)
    out[r0:r1, c0:c1] = kept[1:-1, 1:-1]
    return out


@dataclass(frozen=True)
class OffsetRisk:
    """The risk with the outline moved by ``offset_mm`` (negative: drawn tighter).

    Attributes:
        risk: ensemble-mean case risk, or ``None`` when the outline vanished or became too
            small for a patch (``note`` says which).
        n_patches: patches the risk rests on (0 without a risk).
        member_risks: each member's case risk (empty without a risk).
        area_mm2: area of the moved outline.
    """

    offset_mm: float
    risk: float | None
    n_patches: int
    member_risks: tuple[float, ...]
    area_mm2: float
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset_mm": self.offset_mm,
            "risk": self.risk,
            "n_patches": self.n_patches,
            "member_risks": list(self.member_risks),
            "area_mm2": self.area_mm2,
            "note": self.note,
        }


@dataclass(frozen=True)
class OutlineSensitivity:
    """The risk for outlines drawn tighter and wider than the one drawn.

    Attributes:
        rows: one per offset, in increasing offset (0 is the outline as drawn).
        threshold: the case decision threshold the warning refers to.
        crosses_within_1mm: the prediction (risk ≥ threshold) differs from the drawn outline's
            for some outline within ±1 mm: the result depends on where the edge is drawn.
        crosses_within_2mm: the same within ±2 mm.
        computed, reused: (patch, member) evaluations run, and taken from the cache.
    """

    rows: tuple[OffsetRisk, ...]
    threshold: float
    crosses_within_1mm: bool
    crosses_within_2mm: bool
    computed: int = 0
    reused: int = 0

    @property
    def base(self) -> OffsetRisk:
        return next(r for r in self.rows if r.offset_mm == 0)

    @property
    def warning(self) -> str | None:
        """One sentence for the page when the prediction flips within ±1 mm; ``None`` otherwise."""
        if not self.crosses_within_1mm:
            return None
        return (
            f"The risk crosses the decision threshold ({self.threshold:g}) when the outline is drawn 1 mm tighter "
            "or wider: the prediction depends on exactly where the tumour's edge is drawn."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "threshold": self.threshold,
            "crosses_within_1mm": self.crosses_within_1mm,
            "crosses_within_2mm": self.crosses_within_2mm,
            "warning": self.warning,
            "computed": self.computed,
            "reused": self.reused,
        }


def crosses_threshold(rows: Sequence[OffsetRisk], within_mm: float, threshold: float = CASE_THRESHOLD) -> bool:
    """Whether any outline within ±``within_mm`` gets the other prediction than the outline drawn."""
    base = next((r.risk for r in rows if r.offset_mm == 0), None)
    if base is None:
        return False
    return any(
        r.risk is not None and abs(r.offset_mm) <= within_mm and (r.risk >= threshold) != (base >= threshold)
        for r in rows
    )


def outline_sensitivity(
    ct: CtSlice,
    mask: np.ndarray,
    model: Any,
    *,
    offsets_mm: Sequence[float] = SENSITIVITY_OFFSETS_MM,
    engine: Engine | None = None,
    cache: PatchCache | None = PATCH_CACHE,
    batch_size: int = INFERENCE_BATCH,
    progress: ProgressFn | None = None,
) -> OutlineSensitivity:
    """The case risk for the outline eroded and dilated by each offset, through the patch cache.

    Every offset outline takes its patches from the same lattice as the outline drawn, so
    the table isolates the outline's effect from the grid's (an outline-anchored grid would
    shift every patch too). All new (patch, member) pairs run in one pass with one progress.

    Args:
        ct, mask, model: as for :func:`core.analysis.analyze_case`.
        offsets_mm: offsets in mm; 0 is added when missing.

    Raises:
        NotCalibratedError: the slice has no pixel spacing (an offset in mm needs one) or is
            not usable by the model.
        RoiError: the outline as drawn yields no patch.
        ModelOutputError: the network returned NaN.
    """
    cfg = model.preprocess
    blocker = analysis_blocker(ct, cfg)
    if blocker is not None:
        raise NotCalibratedError(blocker)
    if ct.spacing_mm is None:
        raise NotCalibratedError("The outline sensitivity needs the pixel spacing (mm/px); enter it first.")
    offsets = sorted({float(o) for o in offsets_mm} | {0.0})
    pixel_mm2 = ct.spacing_mm[0] * ct.spacing_mm[1]
    plans: dict[float, Any] = {}
    notes: dict[float, str] = {}
    areas: dict[float, float] = {}
    for offset in offsets:
        moved = offset_outline(mask, ct.spacing_mm, offset)
        areas[offset] = float(moved.sum()) * pixel_mm2
        if not moved.any():
            notes[offset] = f"the outline vanishes when drawn {abs(offset):g} mm tighter"
            continue
        try:
            plans[offset] = plan_lattice(moved, ct.spacing_mm, cfg)
        except RoiError:
            if offset == 0:
                raise
            notes[offset] = (
                f"drawn {abs(offset):g} mm {'tighter' if offset < 0 else 'wider'}, the outline holds no patch"
            )
    union = np.unique(np.concatenate([p.cells for p in plans.values()]), axis=0)
    context = slice_context(ct, cfg)
    probs, counts = score_cells(
        context, union, model, engine=engine, cache=cache, batch_size=batch_size, progress=progress
    )
    if not np.all(np.isfinite(probs)):
        raise ModelOutputError("The model returned invalid probabilities (not a number); no sensitivity is shown.")
    index = {(int(i), int(j)): n for n, (i, j) in enumerate(union)}
    rows = []
    for offset in offsets:
        if offset not in plans:
            rows.append(OffsetRisk(offset, None, 0, (), areas[offset], notes[offset]))
            continue
        member = probs[[index[(int(i), int(j))] for i, j in plans[offset].cells]]
        spread = ensemble_spread(member, model.names)
        rows.append(OffsetRisk(offset, spread.mean, len(member), spread.risks, areas[offset]))
    return OutlineSensitivity(
        rows=tuple(rows),
        threshold=CASE_THRESHOLD,
        crosses_within_1mm=crosses_threshold(rows, WARNING_WITHIN_MM),
        crosses_within_2mm=crosses_threshold(rows, 2.0),
        computed=counts.computed,
        reused=counts.reused,
    )


# ---------------------------------------------------------------- what the pages show
# These read the saved form (``to_dict``), so a live analysis and a reopened case read alike.


def spread_of_folds(spread: dict[str, Any] | None) -> bool | None:
    """Whether a saved spread (:meth:`EnsembleSpread.to_dict`) is across fold models (members "fold k");
    ``None`` when there is no spread to show (one network)."""
    if not spread or len(spread["risks"]) < 2:
        return None
    return all(str(name).startswith("fold ") for name in spread.get("names", ()))


def spread_sentence(spread: dict[str, Any] | None) -> str | None:
    """One sentence on the fold models' range, from :meth:`EnsembleSpread.to_dict`; ``None`` for one network."""
    folds = spread_of_folds(spread)
    if folds is None:
        return None
    k = len(spread["risks"])
    noun = "fold models" if folds else "member networks"
    sentence = f"Across its {k} {noun}: {spread['low']:.0%}–{spread['high']:.0%} (min–max, SD {spread['sd'] * 100:.0f} "
    if folds:
        sentence += (
            f"percentage points). Each fold model learnt from {k - 1}/{k} of the cohort: the range shows how much the "
            "number depends on which patients a model learnt from; it is not a confidence interval for this patient."
        )
    else:
        sentence += "percentage points): how far the networks agree; it is not a confidence interval for this patient."
    if spread.get("members_disagree"):
        sentence += f" The {noun} fall on both sides of the {spread['threshold']:g} decision threshold."
    return sentence


def spread_headline(spread: dict[str, Any] | None) -> str | None:
    """The spread in one short line for beside the risk (:func:`spread_sentence` explains it); ``None`` for one network."""
    folds = spread_of_folds(spread)
    if folds is None:
        return None
    noun = "fold models" if folds else "member networks"
    line = f"Across its {len(spread['risks'])} {noun}: {spread['low']:.0%}–{spread['high']:.0%} (min–max); not a confidence interval."
    if spread.get("members_disagree"):
        line += f" They fall on both sides of the {spread['threshold']:g} decision threshold."
    return line


def _offset_label(offset_mm: float) -> str:
    if offset_mm == 0:
        return "as drawn"
    return f"{abs(offset_mm):g} mm {'tighter' if offset_mm < 0 else 'wider'}"


def sensitivity_table(sensitivity: dict[str, Any]) -> list[dict[str, str]]:
    """Rows for the page, from :meth:`OutlineSensitivity.to_dict`: outline, area (mm²), patches, risk, fold range."""
    rows = []
    for row in sensitivity["rows"]:
        members = row["member_risks"]
        rows.append(
            {
                "outline": _offset_label(row["offset_mm"]),
                "area (mm²)": f"{row['area_mm2']:,.0f}",
                "patches": f"{row['n_patches']:,}" if row["risk"] is not None else "—",
                "DL mean patch prob.": f"{row['risk']:.0%}" if row["risk"] is not None else (row["note"] or "—"),
                "networks (min–max)": (f"{min(members):.0%}–{max(members):.0%}" if len(members) > 1 else "—"),
            }
        )
    return rows
