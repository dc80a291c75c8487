"""The README's deterministic figures, computed by the code they describe.

``python -m core figures`` prints the block; ``--write README.md`` replaces the block between
the markers there. A test regenerates it and compares, so the README cannot drift from the
code (the clinical model's risks and CIs, the patch geometry, the documented cases' patch
counts). Measured speeds are not here: they depend on the machine and live in the README's
"Measured" table with the command that produced them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.clinical import N_CATEGORIES, PAPER_TABLE1_COUNTS, paper_model
from core.lattice import plan_lattice
from core.preprocess import PreprocessConfig

START = "<!-- figures:start (python -m core figures --write README.md) -->"
END = "<!-- figures:end -->"
DOCUMENTED_TUMOUR_MM = 50.0
DOCUMENTED_SPACING_MM = 0.7


def disk_mask(diameter_mm: float, spacing_mm: float) -> np.ndarray:
    """(rows, cols) bool round tumour of ``diameter_mm`` centred in a 512 × 512 slice at ``spacing_mm``."""
    size = 512
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    radius_px = diameter_mm / 2.0 / spacing_mm
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius_px**2


def documented_tumour_patches(cfg: PreprocessConfig | None = None) -> int:
    """Patches of the README's example: a 50 mm round tumour on a 0.7 mm/px slice."""
    spacing = (DOCUMENTED_SPACING_MM, DOCUMENTED_SPACING_MM)
    return len(plan_lattice(disk_mask(DOCUMENTED_TUMOUR_MM, DOCUMENTED_SPACING_MM), spacing, cfg or PreprocessConfig()))


def sample_case_facts(cfg: PreprocessConfig | None = None) -> tuple[float, int, float]:
    """(tumour diameter mm, patches, outline area mm²) of the built-in sample case."""
    from core.imaging import load_slice
    from core.phantom import sample_case
    from core.roi import mask_from_outlines

    sample = sample_case()
    ct = load_slice(sample.dicom_bytes)
    mask = mask_from_outlines([sample.outline_xy], ct.shape)
    patches = len(plan_lattice(mask, ct.spacing_mm, cfg or PreprocessConfig()))
    return sample.tumour_size_mm, patches, float(mask.sum() * ct.pixel_area_mm2)


def render() -> str:
    """The markdown block (between and including the markers)."""
    cfg = PreprocessConfig()
    model = paper_model()
    low, high = model.odds_ratio_ci()
    risks = [model.risk(n) for n in N_CATEGORIES]
    counts = {n: (PAPER_TABLE1_COUNTS[(n, 1)], sum(PAPER_TABLE1_COUNTS[(n, y)] for y in (0, 1))) for n in N_CATEGORIES}
    sample_mm, sample_patches, sample_area = sample_case_facts(cfg)
    lines = [
        START,
        "| figure | value |",
        "|---|---|",
        *(
            f"| clinical model, {r.n_category} ({counts[r.n_category][0]}/{counts[r.n_category][1]} in Table 1) "
            f"| {r.probability:.0%} (95% CI {r.ci_low:.0%}–{r.ci_high:.0%}) |"
            for r in risks
        ),
        f"| clinical model, odds ratio N1 vs N0 | {model.odds_ratio_:.3f} (95% CI {low:.3f}–{high:.3f}) |",
        f"| default patch | {cfg.patch_px} px at {cfg.target_spacing_mm:g} mm/px = **{cfg.patch_mm:g} mm**, "
        f"stride {cfg.stride_px} px = {cfg.stride_mm:g} mm, kept when ≥ {cfg.min_roi_coverage:.0%} inside the outline, "
        f"resized to {cfg.input_px}×{cfg.input_px} |",
        f"| a {DOCUMENTED_TUMOUR_MM:g} mm round tumour at {DOCUMENTED_SPACING_MM:g} mm/px | "
        f"**{documented_tumour_patches(cfg)} patches** |",
        f"| the built-in sample case (phantom tumour, {sample_mm:g} mm longest diameter) | {sample_patches} patches, "
        f"outline {sample_area:,.0f} mm² |",
        END,
    ]
    return "\n".join(lines)


PANEL_PX = 384
ABDOMEN_WINDOW_HU = (40.0, 400.0)  # level, width: a soft-tissue window


def _panel(hu: np.ndarray, caption: str, outline_xy: np.ndarray | None = None) -> np.ndarray:
    """(PANEL_PX + 28, PANEL_PX, 3) uint8 BGR: ``hu`` in the soft-tissue window, resized, captioned below;
    ``outline_xy`` ((K, 2) px of ``hu``) drawn in green."""
    import cv2

    from core.imaging import window_to_unit

    grey = np.round(window_to_unit(hu, *ABDOMEN_WINDOW_HU) * 255.0).astype(np.uint8)
    scale = PANEL_PX / hu.shape[1]
    image = cv2.cvtColor(cv2.resize(grey, (PANEL_PX, PANEL_PX), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
    if outline_xy is not None:
        cv2.polylines(image, [np.round(outline_xy * scale).astype(np.int32)], True, (0, 220, 0), 1, cv2.LINE_AA)
    panel = np.zeros((PANEL_PX + 28, PANEL_PX, 3), dtype=np.uint8)
    panel[:PANEL_PX] = image
    cv2.putText(panel, caption, (6, PANEL_PX + 19), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def _vertebral_body_centre(hu: np.ndarray) -> tuple[int, int]:
    """(row, col) of the largest connected region above 150 HU: the vertebra (ribs and table are smaller)."""
    import cv2

    _count, _, stats, centroids = cv2.connectedComponentsWithStats((hu > 150).astype(np.uint8))
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    col, row = centroids[largest]
    return round(row), round(col)


def phantom_picture() -> np.ndarray:
    """(412, 1152, 3) uint8 BGR: the sample phantom whole (its outline in green), the phantom around
    its spine at the real CT's field of view, and pydicom's ``CT_small.dcm`` (a real CT, 128 × 128 px
    at 0.66 mm), all in a 40/400 HU window."""
    from pydicom.data import get_testdata_file

    from core.imaging import load_slice
    from core.phantom import sample_case

    sample = sample_case()
    phantom = load_slice(sample.dicom_bytes)
    real = load_slice(Path(get_testdata_file("CT_small.dcm")).read_bytes())  # the app's own reader: HU
    real_fov_mm = real.shape[1] * real.spacing_mm[1]
    spacing = phantom.spacing_mm[0]
    cy, cx = _vertebral_body_centre(phantom.pixels)
    half = round(real_fov_mm / spacing / 2)
    crop = phantom.pixels[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
    fov_mm = phantom.shape[1] * spacing
    return np.hstack(
        [
            _panel(phantom.pixels, f"phantom (synthetic), {fov_mm:.0f} mm field", sample.outline_xy),
            _panel(crop, f"phantom around its spine, {real_fov_mm:.0f} mm"),
            _panel(real.pixels, f"pydicom CT_small.dcm (real CT), {real_fov_mm:.0f} mm"),
        ]
    )


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers (inclusive) replaced by ``block``."""
    start, end = text.index(START), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="print (or --write into README.md) the figures the README quotes")
    p.add_argument("--write", default=None, help="file whose figures block to replace, e.g. README.md")
    p.add_argument("--picture", default=None, help="also write the phantom-beside-a-real-CT PNG here")
    p.set_defaults(handler=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> int:
    block = render()
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text(), block))
        print(f"figures written to {path}")
    else:
        print(block)
    if args.picture:
        import cv2

        cv2.imwrite(str(args.picture), phantom_picture())
        print(f"picture written to {args.picture}")
    return 0
