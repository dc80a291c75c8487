"""The abdomen around a phantom tumour: a non-contrast axial CT slice at the level of the liver and kidneys.

Nothing here depends on a patient's label: the early-recurrence signal lives only inside the
tumour (:mod:`core.phantom`). The anatomy is there so that a surgeon recognises the slice and
so that patches cut at the tumour's edge see liver, fat and vessels as they would on a real CT.

Layout, in the radiological convention (the patient's right on the image's left, anterior at
the top), on a 512 × 512 grid whose field of view is chosen to fit the patient, as a scanner's
reconstruction field is: sizes are fractions of the image, the pixel spacing sets them in mm.

=====================  =================  ==========================================
structure              plain-CT HU        where
=====================  =================  ==========================================
air, bowel gas         −1000              outside the body; stomach fundus, bowel loops
subcutaneous fat       −110 to −95        under 3 px of skin (+30), thicker in front
abdominal wall muscle  45 to 55           a 12–16 px ring; paraspinal and psoas muscles
visceral fat           −100 to −85        everything in the cavity not an organ
liver                  55 to 65           right upper quadrant, left lobe across the midline
hepatic/portal veins   liver − 20         tapering branches from the IVC and the hilum
kidneys                28 to 36           posterior, either side of the spine; sinus fat
spleen                 44 to 50           posterior left
stomach, bowel         10 to 40           wall, fluid, gas above an air–fluid level
aorta, IVC             35 to 45           in front of the spine; aortic wall calcification
vertebra, ribs         200 / 700          cancellous body in a cortical shell, canal 15 HU
CT table               −500 in a shell    under the patient
=====================  =================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_PX = 512
AIR_HU = -1000.0


@dataclass
class Abdomen:
    """One slice's anatomy without the tumour.

    Attributes:
        hu: (512, 512) float32 Hounsfield units, noise-free and unblurred.
        liver: (512, 512) bool liver parenchyma (vessels included), where a tumour may grow.
        cavity: (512, 512) bool inside the abdominal wall, where the liver's capsule may retract.
        liver_hu: the parenchyma's nominal HU (its median is 1–3 HU lower, veins included).
        fat_hu: the visceral fat's HU.
        landmarks: (x, y) px of the vertebral body's centre ("spine"), the aorta, the IVC, the
            liver hilum and the stomach-and-spleen's centroid.

    The arrays are the tumour's canvas: :mod:`core.phantom` edits ``hu`` and ``liver`` in place.
    """

    hu: np.ndarray
    liver: np.ndarray
    cavity: np.ndarray
    liver_hu: float
    fat_hu: float
    landmarks: dict[str, tuple[float, float]]


def ellipse(cx: float, cy: float, a: float, b: float, angle_deg: float = 0.0) -> np.ndarray:
    """(512, 512) bool filled ellipse; centre and semi-axes in px, placed to 1/16 px (OpenCV's polygon).

    Raises:
        ValueError: a semi-axis that is not positive.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"ellipse semi-axes must be positive, got {a:g} and {b:g} px")
    canvas = np.zeros((IMAGE_PX, IMAGE_PX), dtype=np.uint8)
    scale = 16  # cv2 draws at 4 fractional bits with shift=4
    cv2.ellipse(
        canvas,
        (round(cx * scale), round(cy * scale)),
        (max(1, round(a * scale)), max(1, round(b * scale))),  # ≥ 1/16 px
        angle_deg,
        0,
        360,
        1,
        -1,
        cv2.LINE_8,
        4,
    )
    return canvas > 0


def draw_line(points: np.ndarray, width_px: float) -> np.ndarray:
    """(512, 512) bool polyline of (K, 2) float (x, y) points, ``width_px`` thick."""
    canvas = np.zeros((IMAGE_PX, IMAGE_PX), dtype=np.uint8)
    pts = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], False, 1, max(1, round(width_px)), cv2.LINE_8, 4)
    return canvas > 0


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by a disc of radius ``px``."""
    if px <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def smooth_field(rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """(512, 512) float32 zero-mean, unit-SD Gaussian random field of correlation length ``sigma_px``."""
    field = cv2.GaussianBlur(rng.normal(0.0, 1.0, (IMAGE_PX, IMAGE_PX)).astype(np.float32), (0, 0), sigma_px)
    return field / max(float(field.std()), 1e-6)


def _jitter(rng: np.random.Generator, spread: float) -> float:
    return float(rng.uniform(1.0 - spread, 1.0 + spread))


def make_abdomen(rng: np.random.Generator, room_px: float = 0.0) -> Abdomen:
    """Draw one abdomen whose liver holds a disc of radius ``room_px`` (px) where the cavity allows.

    The liver is enlarged for a large tumour and then displaces the right kidney, the stomach and
    the spleen (drawn first, painted over where it needs their room), never the spine, aorta or IVC.
    """
    c = IMAGE_PX / 2.0
    yy, xx = np.mgrid[0:IMAGE_PX, 0:IMAGE_PX].astype(np.float32) + 0.5
    hu = np.full((IMAGE_PX, IMAGE_PX), AIR_HU, dtype=np.float32)

    body, cavity, by, back = _body_wall(hu, xx, yy, rng)
    fat_hu = float(np.median(hu[cavity]))
    spine = _spine(hu, c, back, rng)
    vessels = _great_vessels(hu, c, spine["body_top"], rng)
    kidneys = _kidneys(hu, c, spine["body_cy"], cavity, rng)
    stomach = _stomach_and_spleen(hu, c, cavity, rng)
    liver_hu = float(rng.uniform(55.0, 65.0))
    shape = _liver_shape(c, by, room_px, rng) & cavity & ~dilate(spine["all"] | vessels["aorta"] | vessels["ivc"], 3)
    liver = shape & ~dilate(kidneys | stomach, 3)
    if max_depth_px(liver) < room_px:  # a large tumour's liver pushes the movable organs aside
        liver = shape
    hu[liver] = liver_hu + 2.5 * smooth_field(rng, 25.0)[liver]  # gentle parenchymal inhomogeneity
    hilum = (vessels["ivc_xy"][0] - 40.0, vessels["ivc_xy"][1] - 30.0)
    _liver_veins(hu, liver, vessels["ivc_xy"], hilum, liver_hu, rng)
    taken = liver | stomach | kidneys | vessels["aorta"] | vessels["ivc"] | spine["all"]
    _bowel(hu, c, cavity & ~dilate(taken, 3), rng)
    _table(hu, body)
    return Abdomen(
        hu=hu,
        liver=liver,
        cavity=cavity,
        liver_hu=liver_hu,
        fat_hu=fat_hu,
        landmarks={
            "spine": (c, spine["body_cy"]),
            "aorta": vessels["aorta_xy"],
            "ivc": vessels["ivc_xy"],
            "hilum": hilum,
            "stomach": stomach_centre(stomach),
        },
    )


def max_depth_px(region: np.ndarray) -> float:
    """The radius (px) of the largest disc inside ``region``: its greatest distance to the outside."""
    if not region.any():
        return 0.0
    return float(cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 5).max())


def stomach_centre(stomach: np.ndarray) -> tuple[float, float]:
    """Centroid (x, y) in px of the stomach-and-spleen mask's pixels."""
    rows, cols = np.nonzero(stomach)
    return (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5) if len(rows) else (IMAGE_PX / 2.0, IMAGE_PX / 2.0)


def _body_wall(
    hu: np.ndarray, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Skin, subcutaneous fat, muscle ring and visceral fat; returns (body, cavity, centre y, back y)."""
    c = IMAGE_PX / 2.0
    by = c + 6.0
    half_width = 0.44 * IMAGE_PX * _jitter(rng, 0.03)
    front, back = 0.32 * IMAGE_PX * _jitter(rng, 0.05), 0.29 * IMAGE_PX * _jitter(rng, 0.03)
    # flatter at the back: the patient lies supine on the table
    ry = np.where(yy < by, front, back)
    radius = np.sqrt(((xx - c) / half_width) ** 2 + ((yy - by) / ry) ** 2)
    body = radius <= 1.0
    depth = cv2.distanceTransform(body.astype(np.uint8), cv2.DIST_L2, 5)  # px in from the skin
    anterior = np.clip((by - yy) / front, 0.0, 1.0)
    fat_px = float(rng.uniform(14.0, 34.0)) * (1.0 + 0.5 * anterior)
    muscle_px = float(rng.uniform(12.0, 16.0))
    hu[body] = float(rng.uniform(-110.0, -95.0))
    hu[body & (depth < 3.0)] = 30.0
    wall = body & (depth >= fat_px) & (depth < fat_px + muscle_px)
    hu[wall] = float(rng.uniform(45.0, 55.0))
    cavity = body & (depth >= fat_px + muscle_px)
    hu[cavity] = float(rng.uniform(-100.0, -85.0))
    _ribs(hu, c, by, half_width, front, back, fat_px, muscle_px, rng)
    return body, cavity, by, by + back


def _ribs(
    hu: np.ndarray,
    c: float,
    by: float,
    half_width: float,
    front: float,
    back: float,
    fat_px: np.ndarray,
    muscle_px: float,
    rng: np.random.Generator,
) -> None:
    """Rib cross-sections in the wall along the flanks and back (cortex 700 HU, marrow 250 HU)."""
    for side in (-1.0, 1.0):
        for angle in np.deg2rad(rng.uniform(-4, 4, 6) + np.array([-35, -10, 15, 40, 62, 80])):
            ry = front if np.sin(angle) < 0 else back
            depth = float(np.mean(fat_px)) * 0.9 + muscle_px * 0.5
            scale = 1.0 - depth / min(half_width, ry)
            x = c + side * np.cos(angle) * half_width * scale
            y = by + np.sin(angle) * ry * scale
            tangent = np.degrees(np.arctan2(np.cos(angle) * ry, -side * np.sin(angle) * half_width))
            hu[ellipse(x, y, 8.0, 5.0, tangent)] = 700.0
            hu[ellipse(x, y, 5.5, 2.8, tangent)] = 250.0


def _spine(hu: np.ndarray, c: float, back: float, rng: np.random.Generator) -> dict:
    """Vertebral body, canal, posterior elements, paraspinal and psoas muscles."""
    r = 30.0 * _jitter(rng, 0.08)
    cy = back - 3.6 * r
    muscle = float(rng.uniform(45.0, 55.0))
    para = ellipse(c - 46, cy + 2.2 * r, 36, 28, 10) | ellipse(c + 46, cy + 2.2 * r, 36, 28, -10)
    psoas = ellipse(c - 36, cy - 0.2 * r, 13, 11) | ellipse(c + 36, cy - 0.2 * r, 13, 11)
    hu[para | psoas] = muscle
    cortex = ellipse(c, cy, r * 1.15, r * 0.9)  # wider than deep, as a lumbar body is
    hu[cortex] = 700.0
    hu[ellipse(c, cy, r * 1.15 - 3, r * 0.9 - 3)] = float(rng.uniform(170.0, 230.0))
    lamina = np.array(
        [[c - 17, cy + r + 2], [c - 12, cy + r + 24], [c, cy + r + 30], [c + 12, cy + r + 24], [c + 17, cy + r + 2]]
    )
    arch = draw_line(lamina, 6)
    arch |= draw_line(np.array([[c, cy + r + 30], [c, cy + 3.0 * r]]), 6)  # spinous process
    for side in (-1.0, 1.0):  # transverse processes, angled back
        arch |= draw_line(np.array([[c + side * 14, cy + r + 10], [c + side * 42, cy + r + 16]]), 5)
    hu[arch] = 600.0
    canal = ellipse(c, cy + r + 13, 12, 11)
    hu[canal] = 15.0
    return {"all": cortex | arch | canal | para | psoas, "body_top": cy - r, "body_cy": cy}


def _great_vessels(hu: np.ndarray, c: float, body_top: float, rng: np.random.Generator) -> dict:
    """Aorta (with a wall calcification in some patients) and IVC, unenhanced blood ≈ 40 HU."""
    blood = float(rng.uniform(35.0, 45.0))
    r = 15.0 * _jitter(rng, 0.1)
    ax, ay = c + 14.0, body_top - r - 3.0
    aorta = ellipse(ax, ay, r, r)
    hu[aorta] = blood
    if rng.random() < 0.5:
        start = rng.uniform(0, 360)
        canvas = np.zeros(hu.shape, dtype=np.uint8)
        cv2.ellipse(canvas, (round(ax), round(ay)), (round(r), round(r)), 0, start, start + 50, 1, 2)
        hu[canvas > 0] = 400.0
    ivc_xy = (c - 30.0, body_top - 12.0)
    ivc = ellipse(*ivc_xy, 17.0 * _jitter(rng, 0.1), 12.0, 0)
    hu[ivc] = blood
    return {"aorta": aorta, "aorta_xy": (ax, ay), "ivc": ivc, "ivc_xy": ivc_xy, "blood_hu": blood}


def _kidneys(hu: np.ndarray, c: float, spine_cy: float, cavity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Both kidneys, hilum turned anteromedially, with renal sinus fat."""
    out = np.zeros(hu.shape, dtype=bool)
    parenchyma = float(rng.uniform(28.0, 36.0))
    for side in (-1.0, 1.0):
        cx, cy = c + side * 92.0 * _jitter(rng, 0.05), spine_cy + rng.uniform(-6, 8)
        angle = side * -28.0 + rng.uniform(-6, 6)
        kidney = ellipse(cx, cy, 27.0 * _jitter(rng, 0.1), 42.0 * _jitter(rng, 0.1), angle) & cavity
        hu[kidney] = parenchyma
        hu[kidney & ellipse(cx - side * 15, cy - 6, 8, 16, angle)] = -70.0
        out |= kidney
    return out


def _stomach_and_spleen(hu: np.ndarray, c: float, cavity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stomach (wall, fluid, gas above a horizontal air–fluid level) and spleen; returns both."""
    sx, sy = c + 100.0 + rng.uniform(-10, 10), c - 78.0 + rng.uniform(-10, 10)
    a, b, angle = 56.0 * _jitter(rng, 0.12), 38.0 * _jitter(rng, 0.12), rng.uniform(5, 25)
    stomach = ellipse(sx, sy, a, b, angle) & cavity
    lumen = ellipse(sx, sy, a - 5, b - 5, angle) & cavity
    hu[stomach] = 40.0
    hu[lumen] = 12.0
    level = sy - b + float(rng.uniform(0.3, 0.6)) * 2 * b  # gas floats anteriorly (up) in a supine patient
    rows = np.arange(IMAGE_PX, dtype=np.float32)[:, None] + 0.5
    hu[lumen & (rows < level)] = AIR_HU
    spleen = ellipse(c + 168.0, c + 10.0, 28.0 * _jitter(rng, 0.1), 60.0 * _jitter(rng, 0.1), -30)
    spleen &= ~dilate(~cavity, 3) & ~dilate(stomach, 3)  # a rim of fat between it and the wall muscle
    hu[spleen] = float(rng.uniform(44.0, 50.0))
    return stomach | spleen


def _bowel(hu: np.ndarray, c: float, free: np.ndarray, rng: np.random.Generator) -> None:
    """Four to seven bowel loops in front and to the left: wall 35 HU, gas, fluid or mottled stool."""
    for _ in range(int(rng.integers(4, 8))):
        r = float(rng.uniform(10.0, 20.0))
        x, y = c + rng.uniform(-10, 150), c + rng.uniform(-120, 20)
        loop = ellipse(x, y, r, r * _jitter(rng, 0.2), rng.uniform(0, 180)) & free
        inner = ellipse(x, y, r - 3, (r - 3) * 0.9, 0) & loop
        hu[loop] = 35.0
        kind = rng.integers(3)
        if kind == 0:
            hu[inner] = AIR_HU
        elif kind == 1:
            hu[inner] = 10.0
        else:
            mottle = smooth_field(rng, 1.5)
            hu[inner] = np.where(mottle[inner] > 0.6, AIR_HU, 20.0)
        free &= ~loop


def _liver_shape(c: float, by: float, room_px: float, rng: np.random.Generator) -> np.ndarray:
    """Right lobe (enlarged to hold ``room_px``) and a tapering left lobe, united and rounded."""
    a, b = 0.20 * IMAGE_PX * _jitter(rng, 0.06), 0.23 * IMAGE_PX * _jitter(rng, 0.06)
    grow = max(1.0, 1.08 * room_px / min(a, b))
    a, b = a * grow, b * grow
    cx, cy = c - 0.17 * IMAGE_PX + (grow - 1.0) * 0.25 * a, by - 0.05 * IMAGE_PX
    right = ellipse(cx, cy, a, b, rng.uniform(-10, 10))
    left = ellipse(c + 0.02 * IMAGE_PX, by - 0.16 * IMAGE_PX, 0.15 * IMAGE_PX * _jitter(rng, 0.15), 0.06 * IMAGE_PX, -8)
    shape = cv2.GaussianBlur((right | left).astype(np.float32), (0, 0), 6.0)
    return shape > 0.5


def _liver_veins(
    hu: np.ndarray,
    liver: np.ndarray,
    ivc_xy: tuple[float, float],
    hilum_xy: tuple[float, float],
    liver_hu: float,
    rng: np.random.Generator,
) -> None:
    """Hepatic veins fanning out of the IVC and portal branches from the hilum, ~20 HU below the liver."""
    vein_hu = liver_hu - float(rng.uniform(17.0, 23.0))
    ys, xs = np.nonzero(liver)
    if len(xs) == 0:
        return
    starts = [np.array(ivc_xy)] * 3 + [np.array(hilum_xy)] * 4
    for start in starts:
        end_index = rng.integers(len(xs))
        end = np.array([xs[end_index], ys[end_index]], dtype=np.float64)
        steps = np.linspace(0.0, 1.0, 12)[:, None]
        bend = rng.normal(0.0, 10.0, 2) * np.sin(np.pi * steps)
        path = start + (end - start) * steps + bend
        for k in range(len(path) - 1):
            width = 8.0 - 5.5 * k / (len(path) - 1)  # tapering toward the periphery
            hu[draw_line(path[k : k + 2], width) & liver] = vein_hu


def _table(hu: np.ndarray, body: np.ndarray) -> None:
    """The CT couch under the patient: a carbon-fibre shell around foam."""
    rows = np.nonzero(body.any(axis=1))[0]
    top = int(rows.max()) + 4
    if top + 14 >= IMAGE_PX:
        return
    x0, x1 = int(0.08 * IMAGE_PX), int(0.92 * IMAGE_PX)
    hu[top : top + 14, x0:x1] = -500.0
    hu[top : top + 2, x0:x1] = 150.0
    hu[top + 12 : top + 14, x0:x1] = 150.0
