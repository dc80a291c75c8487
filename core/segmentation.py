"""Import a tumour outline from DICOM SEG, NIfTI or a PNG mask; export one as DICOM SEG and PNG.

Every import returns boolean masks in the image's own pixels (row, col) for the slices of
the chosen series, plus the slice with the largest tumour area (the paper's rule: "the CT
image showing the largest tumor area was selected"), which the page shows and lets the
user change.

How a 3-D outline is put on the series' slices:

* **DICOM SEG** (read with highdicom). First by reference: frames whose source image is one
  of the series' slices (SOP Instance UID) are taken as they are, if their size matches.
  Failing that, by geometry: when the SEG shares the series' Frame of Reference UID, each
  frame is placed by its ImagePositionPatient / ImageOrientationPatient / PixelSpacing on the
  slice at the same position. Otherwise the SEG belongs to other images and is refused.
* **NIfTI** (read with nibabel). NIfTI has no UIDs, only an affine from voxel indices to
  millimetres in *RAS+* (+x = patient's right, +y = anterior, +z = superior). DICOM uses
  *LPS+* (+x = left, +y = posterior, +z = superior), so the DICOM point (x, y, z) is the NIfTI
  point (−x, −y, z). 3D Slicer, ITK-SNAP, MONAI and dcm2niix write RAS+ affines, and this
  module assumes the file does too. A file whose affine holds LPS numbers (a known converter
  bug) would be mirrored left–right and front–back; that is caught only when the mirror lands
  off the series (refused: "does not overlap"), not when it lands inside it. The NIfTI grid
  must be the series' own pixel grid (an outline made on this series); a resampled one is
  refused rather than interpolated. A header without qform and sform is refused.
* **PNG mask**: the slice's own size, non-zero = tumour.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from core.dicom_codecs import decode_failed
from core.dicomref import SliceGeometry, SourceReference, geometry_of
from core.errors import OutlineImportError, RoiError, UserFacingError
from core.imaging import CtSlice, raster_size
from core.limits import MAX_OUTLINE_VOXELS, MAX_SEG_FRAMES, MAX_SIDE_PX, MAX_TOTAL_BYTES
from core.series import SEG_SOP_CLASS, SeriesSummary

_TUMOUR_WORDS = re.compile(r"tumou?r|neoplasm|lesion|mass|cancer|carcinoma|cholangio|icc|hcc|nodule", re.IGNORECASE)
# A frame / NIfTI slice sits on a series slice when their planes are this close (fraction of
# the slice spacing) and their pixel grids coincide to this fraction of a pixel.
_PLANE_TOLERANCE = 0.25
_GRID_TOLERANCE = 0.05
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


_SEG_DAMAGED = "The DICOM SEG file is damaged or unusual in a way this tool cannot read; export it again."
_NIFTI_DAMAGED = "The NIfTI file is damaged or unusual in a way this tool cannot read; export it again."
_PNG_DAMAGED = "The PNG mask is damaged or incomplete; export it again."


@contextlib.contextmanager
def _damaged_file_is_a_sentence(sentence: str) -> Iterator[None]:
    """Last line of defence, as in :mod:`core.imaging`: whatever a damaged outline file makes pydicom,
    highdicom, nibabel or OpenCV raise that the checks did not foresee becomes ``sentence``, never a
    traceback. The checks' own sentences pass through."""
    try:
        yield
    except UserFacingError:
        raise
    except Exception as exc:
        raise OutlineImportError(sentence) from exc


# --------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a DICOM SEG (or one label of a NIfTI label map).

    Attributes:
        number: SegmentNumber (NIfTI: the label value).
        label: SegmentLabel ("" when absent).
        property_type: the segmented property's meaning ("Neoplasm"), "" when absent.
    """

    number: int
    label: str
    property_type: str = ""

    @property
    def title(self) -> str:
        words = " / ".join(w for w in (self.label, self.property_type) if w)
        return f"{self.number}: {words}" if words else str(self.number)


@dataclass(frozen=True)
class ImportedOutline:
    """An outline placed on the slices of one series.

    Attributes:
        masks: series slice index → (rows, cols) bool mask in that slice's pixels; only
            slices the outline touches.
        default_index: the slice with the largest tumour area (ties: the lower index).
        shape: (rows, cols) of the series' slices.
        how: how it was matched, in words ("DICOM SEG, segment 1 (Tumour), by SOP Instance UID").
        segments: the SEG's segments or the NIfTI's labels, for a picker; () for a PNG.
        segment: the segment / label imported, or ``None`` for a PNG.
    """

    masks: dict[int, np.ndarray]
    default_index: int
    shape: tuple[int, int]
    how: str
    segments: tuple[SegmentInfo, ...] = ()
    segment: int | None = None

    @property
    def areas_px(self) -> dict[int, int]:
        """Slice index → tumour pixels."""
        return {index: int(mask.sum()) for index, mask in self.masks.items()}

    def mask(self, index: int) -> np.ndarray:
        """(rows, cols) bool mask of slice ``index`` (all False where the outline does not reach)."""
        found = self.masks.get(index)
        return found.copy() if found is not None else np.zeros(self.shape, dtype=bool)


@dataclass(frozen=True)
class _Target:
    """A slice the outline may land on."""

    index: int
    sop_uid: str
    geometry: SliceGeometry | None
    shape: tuple[int, int]


@dataclass(frozen=True)
class _Targets:
    slices: tuple[_Target, ...]
    frame_of_reference_uid: str
    spacing_mm: float | None  # between neighbouring slices, for the plane tolerance

    @property
    def shape(self) -> tuple[int, int]:
        return self.slices[0].shape


def _targets(image: SeriesSummary | CtSlice) -> _Targets:
    """The slices of a series, or a single loaded slice as a series of one."""
    if isinstance(image, CtSlice):
        ref = image.source_ref
        return _Targets(
            slices=(_Target(0, ref.sop_uid if ref else "", ref.geometry if ref else None, image.shape),),
            frame_of_reference_uid=(ref.frame_of_reference_uid or "") if ref else "",
            spacing_mm=ref.slice_thickness_mm if ref else None,
        )
    return _Targets(
        slices=tuple(
            _Target(i, entry.sop_uid, entry.geometry, (image.rows, image.columns))
            for i, entry in enumerate(image.slices)
        ),
        frame_of_reference_uid=image.frame_of_reference_uid,
        spacing_mm=image.slice_spacing_mm or image.slice_thickness_mm,
    )


def _outline(masks: dict[int, np.ndarray], shape: tuple[int, int], how: str, **extra: object) -> ImportedOutline:
    kept = {index: masks[index] for index in sorted(masks) if masks[index].any()}
    if not kept:
        raise OutlineImportError("The imported outline is empty on every slice of this series; check the file.")
    default = max(sorted(kept), key=lambda index: int(kept[index].sum()))
    return ImportedOutline(masks=kept, default_index=default, shape=shape, how=how, **extra)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- DICOM SEG


def seg_segments(data: bytes) -> tuple[SegmentInfo, ...]:
    """The segments of a DICOM SEG, from its header only (for the picker).

    Raises:
        OutlineImportError: not a DICOM SEG, or too large.
    """
    with _damaged_file_is_a_sentence(_SEG_DAMAGED):
        return _segments(_seg_header(data))


def import_seg(data: bytes, image: SeriesSummary | CtSlice, segment: int | None = None) -> ImportedOutline:
    """Put one segment of a DICOM SEG (single- or multi-frame) on a series' slices.

    Args:
        data: the SEG file's bytes.
        image: the series (from :func:`core.series.scan_upload`) or one loaded slice.
        segment: SegmentNumber to import; default the first segment whose label or property
            names a tumour ("Tumour", "Neoplasm", "lesion", …), else the first segment.

    Returns:
        Masks per slice index (see :class:`ImportedOutline`).

    Raises:
        OutlineImportError: not a SEG; too large; damaged; no such segment; frames of another
            size; neither referenced slices nor the frame of reference match this series.
    """
    with _damaged_file_is_a_sentence(_SEG_DAMAGED):
        return _import_seg(data, image, segment)


def _import_seg(data: bytes, image: SeriesSummary | CtSlice, segment: int | None) -> ImportedOutline:
    import highdicom as hd

    header = _seg_header(data)
    targets = _targets(image)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:
        raise OutlineImportError("The DICOM SEG file is damaged or incomplete; export it again.") from exc
    segments = _segments(header)
    if not segments:
        raise OutlineImportError("The DICOM SEG defines no segment; export it again with the tumour segment.")
    number = segment if segment is not None else _default_segment(segments)
    if number not in {s.number for s in segments}:
        raise OutlineImportError(
            f"The DICOM SEG has no segment {number}; choose one of {', '.join(s.title for s in segments)}."
        )
    info = next(s for s in segments if s.number == number)
    name = f"DICOM SEG, segment {info.title}"
    seg_shape = (int(header.Rows), int(header.Columns))

    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    matched = [t for t in targets.slices if t.sop_uid and t.sop_uid in referenced]
    if matched:
        if seg_shape != targets.shape:
            raise OutlineImportError(
                f"The DICOM SEG's frames are {seg_shape[1]}×{seg_shape[0]} pixels but this series' slices are "
                f"{targets.shape[1]}×{targets.shape[0]}; import the segmentation made on this series."
            )
        try:
            pixels = seg.get_pixels_by_source_instance(
                [t.sop_uid for t in matched], segment_numbers=[number], ignore_spatial_locations=True
            )
        except BaseException as exc:
            if not decode_failed(exc):
                raise
            raise OutlineImportError(
                "The DICOM SEG's frames cannot be matched to the slices they reference; export it again."
            ) from exc
        masks = {t.index: _binary(pixels[i, ..., 0]) for i, t in enumerate(matched)}
        return _outline(masks, targets.shape, f"{name}, matched by SOP Instance UID", segments=segments, segment=number)

    seg_frame = str(header.get("FrameOfReferenceUID", "") or "").strip()
    if not (seg_frame and seg_frame == targets.frame_of_reference_uid):
        raise OutlineImportError(
            "This DICOM SEG belongs to other images: it references none of this series' slices and does not "
            "share its frame of reference; import the segmentation made on this series."
        )
    masks = _seg_by_geometry(ds, number, targets)
    return _outline(masks, targets.shape, f"{name}, placed by position", segments=segments, segment=number)


def _seg_header(data: bytes) -> pydicom.Dataset:
    """The SEG's header, checked for type and size before any pixel is read."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise OutlineImportError("This file is not a DICOM SEG (it cannot be read as DICOM).") from exc
    try:
        sop_class = str(header.get("SOPClassUID", "") or "")
        modality = str(header.get("Modality", "") or "").upper()
    except Exception as exc:  # pydicom converts on access: an unknown VR or a wrong length raises here
        raise OutlineImportError("This file is not a DICOM SEG (its header cannot be read).") from exc
    if sop_class != SEG_SOP_CLASS and modality != "SEG":
        what = f"a DICOM {modality} object" if modality else "another DICOM object"
        raise OutlineImportError(f"This file is {what}, not a DICOM SEG; import a segmentation.")
    try:
        frames = int(header.get("NumberOfFrames", 1) or 1)
        rows, cols = int(header.Rows), int(header.Columns)
    except Exception as exc:
        raise OutlineImportError("The DICOM SEG's header lacks its size; export it again.") from exc
    if min(frames, rows, cols) < 1:
        raise OutlineImportError("The DICOM SEG's header lacks its size; export it again.")
    if frames > MAX_SEG_FRAMES or max(rows, cols) > MAX_SIDE_PX or frames * rows * cols > MAX_OUTLINE_VOXELS:
        raise OutlineImportError(
            f"The DICOM SEG holds {frames} frames of {cols}×{rows} pixels, more than this tool reads "
            f"({MAX_SEG_FRAMES} frames, {MAX_SIDE_PX} px a side); export the tumour segment alone."
        )
    return header


def _segments(header: pydicom.Dataset) -> tuple[SegmentInfo, ...]:
    """The SEG's segments from its SegmentSequence.

    Raises:
        OutlineImportError: a segment without a whole SegmentNumber, or a sequence pydicom cannot read.
    """
    try:
        return tuple(_segment_info(item) for item in header.get("SegmentSequence", []))
    except Exception as exc:
        raise OutlineImportError(
            "The DICOM SEG's list of segments is damaged (a segment without a number); export it again."
        ) from exc


def _segment_info(item: pydicom.Dataset) -> SegmentInfo:
    label = str(item.get("SegmentLabel", "") or "").strip()
    prop = ""
    for seq in ("SegmentedPropertyTypeCodeSequence",):
        if seq in item and len(item[seq].value):
            prop = str(item[seq].value[0].get("CodeMeaning", "") or "").strip()
    return SegmentInfo(number=int(item.SegmentNumber), label=label, property_type=prop)


def _default_segment(segments: Sequence[SegmentInfo]) -> int:
    for info in segments:
        if _TUMOUR_WORDS.search(f"{info.label} {info.property_type}"):
            return info.number
    return segments[0].number


def _binary(frame: np.ndarray) -> np.ndarray:
    """A frame as bool: fractional values (rescaled to 0–1 by highdicom) count from 0.5."""
    if np.issubdtype(frame.dtype, np.floating):
        return frame >= 0.5
    return frame > 0


def _seg_by_geometry(ds: pydicom.Dataset, number: int, targets: _Targets) -> dict[int, np.ndarray]:
    """Place each frame of segment ``number`` by its plane position on the slice at the same position."""
    if any(t.geometry is None for t in targets.slices):
        raise OutlineImportError(
            "This series' slices lack positions, so a DICOM SEG that does not reference them cannot be placed; "
            "import a SEG made on this series."
        )
    frames = _seg_frames(ds)
    shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    labelmap = str(ds.get("SegmentationType", "")).upper() == "LABELMAP"
    maximum = float(ds.get("MaximumFractionalValue", 1) or 1)
    fractional = str(ds.get("SegmentationType", "")).upper() == "FRACTIONAL"
    masks: dict[int, np.ndarray] = {}
    for i, frame in enumerate(frames):
        groups = per_frame[i] if i < len(per_frame) else pydicom.Dataset()
        if not labelmap:
            ident = _group(groups, shared, "SegmentIdentificationSequence")
            if ident is None or int(ident.get("ReferencedSegmentNumber", 0)) != number:
                continue
            inside = frame >= 0.5 * maximum if fractional else frame > 0
        else:
            inside = frame == number
        geometry = _frame_geometry(groups, shared, frame.shape)
        if geometry is None:
            raise OutlineImportError(
                "The DICOM SEG's frames carry no position or orientation, so they cannot be placed on this "
                "series; export it again from the segmentation software."
            )
        volume = inside[:, :, None]
        for target in targets.slices:
            placed = _on_slice(volume, geometry.index_to_patient(), target, targets.spacing_mm, "DICOM SEG")
            if placed is not None:
                masks[target.index] = masks.get(target.index, np.zeros(target.shape, bool)) | placed
    if not masks:
        raise OutlineImportError(
            "The DICOM SEG's frames lie on none of this series' slices (same frame of reference, other "
            "positions); import the segmentation made on this series."
        )
    return masks


def _seg_frames(ds: pydicom.Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except BaseException as exc:
        if not decode_failed(exc):
            raise
        raise OutlineImportError("The DICOM SEG's pixel data cannot be decoded; export it again.") from exc
    return pixels[None] if pixels.ndim == 2 else pixels


def _group(per_frame: pydicom.Dataset, shared: pydicom.Dataset, keyword: str) -> pydicom.Dataset | None:
    for groups in (per_frame, shared):
        if keyword in groups and len(groups[keyword].value):
            return groups[keyword].value[0]
    return None


def _frame_geometry(
    per_frame: pydicom.Dataset, shared: pydicom.Dataset, shape: tuple[int, ...]
) -> SliceGeometry | None:
    position = _group(per_frame, shared, "PlanePositionSequence")
    orientation = _group(per_frame, shared, "PlaneOrientationSequence")
    measures = _group(per_frame, shared, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        return None
    flat = pydicom.Dataset()
    flat.ImagePositionPatient = position.get("ImagePositionPatient")
    flat.ImageOrientationPatient = orientation.get("ImageOrientationPatient")
    flat.PixelSpacing = measures.get("PixelSpacing")
    flat.Rows, flat.Columns = int(shape[0]), int(shape[1])
    return geometry_of(flat)


# --------------------------------------------------------------------------------- placing a grid on a slice


def _on_slice(
    volume: np.ndarray, index_to_lps: np.ndarray, target: _Target, spacing_mm: float | None, what: str
) -> np.ndarray | None:
    """The part of a boolean ``volume`` (I, J, K) that lies on ``target``'s pixel grid, or ``None``.

    ``index_to_lps`` maps (i, j, k, 1) to LPS mm. A target pixel (r, c) sits at
    ``P + c·Δc·X + r·Δr·Y``; in volume indices that is ``v0 + r·dr + c·dc``. The grids match
    when ``dr`` and ``dc`` are unit steps along two different volume axes and ``v0`` is a whole
    voxel in-plane; the remaining axis must put the slice within a quarter of the slice spacing
    of a volume plane, else this slice gets nothing (``None``).

    Raises:
        OutlineImportError: the volume's grid is not this series' pixel grid.
    """
    geometry = target.geometry
    assert geometry is not None
    singular = OutlineImportError(
        f"The {what} file's geometry (its affine) cannot be inverted, so it cannot be placed on this series; "
        "re-export it from the segmentation tool."
    )
    try:
        lps_to_index = np.linalg.inv(index_to_lps)
    except np.linalg.LinAlgError:
        raise singular from None
    to_patient = geometry.index_to_patient()
    with np.errstate(over="ignore", invalid="ignore"):  # a nearly singular affine overflows: refused below
        v0 = lps_to_index @ to_patient @ np.array([0.0, 0.0, 0.0, 1.0])
        dr = lps_to_index[:3, :3] @ to_patient[:3, 0]
        dc = lps_to_index[:3, :3] @ to_patient[:3, 1]
    if not (np.isfinite(v0).all() and np.isfinite(dr).all() and np.isfinite(dc).all()):
        raise singular
    axis_r, axis_c = int(np.argmax(np.abs(dr))), int(np.argmax(np.abs(dc)))
    unit_r, unit_c = np.zeros(3), np.zeros(3)
    unit_r[axis_r], unit_c[axis_c] = np.sign(dr[axis_r]), np.sign(dc[axis_c])
    hint = " (or its affine is not in RAS+ coordinates)" if what == "NIfTI" else ""
    if axis_r == axis_c or not (
        np.allclose(dr, unit_r, atol=_GRID_TOLERANCE) and np.allclose(dc, unit_c, atol=_GRID_TOLERANCE)
    ):
        raise OutlineImportError(
            f"The {what} outline is on another pixel grid than this series (other pixel size or orientation){hint}; "
            "import the one made on this series, not a resampled copy."
        )
    axis_k = 3 - axis_r - axis_c
    v0 = v0[:3]
    in_plane = v0[[axis_r, axis_c]]
    if np.abs(in_plane - np.round(in_plane)).max() > _GRID_TOLERANCE:
        raise OutlineImportError(
            f"The {what} outline's pixels are shifted by a fraction of a pixel against this series' slices{hint}; "
            "import the one made on this series, not a resampled copy."
        )
    # distance from the nearest volume plane, in mm along the volume's k axis
    k = float(v0[axis_k])
    k_round = round(k)
    step_mm = float(np.linalg.norm(index_to_lps[:3, axis_k]))
    tolerance_mm = _PLANE_TOLERANCE * (spacing_mm or 1.0)
    if abs(k - k_round) * step_mm > max(tolerance_mm, 1e-3) or not 0 <= k_round < volume.shape[axis_k]:
        return None
    plane = np.take(volume, k_round, axis=axis_k)  # remaining axes in index order
    if axis_r > axis_c:
        plane = plane.T  # rows first
    rows, cols = target.shape
    r_index = int(np.rint(in_plane[0])) + int(unit_r[axis_r]) * np.arange(rows)
    c_index = int(np.rint(in_plane[1])) + int(unit_c[axis_c]) * np.arange(cols)
    r_ok = (r_index >= 0) & (r_index < plane.shape[0])
    c_ok = (c_index >= 0) & (c_index < plane.shape[1])
    out = np.zeros(target.shape, dtype=bool)
    if r_ok.any() and c_ok.any():
        out[np.ix_(r_ok, c_ok)] = plane[np.ix_(r_index[r_ok], c_index[c_ok])]
    return out


# --------------------------------------------------------------------------------- NIfTI


def nifti_labels(data: bytes) -> tuple[SegmentInfo, ...]:
    """The non-zero label values of a NIfTI label map (a binary mask has one: 1).

    Raises:
        OutlineImportError: not NIfTI, too large, or without orientation.
    """
    with _damaged_file_is_a_sentence(_NIFTI_DAMAGED):
        volume, _ = _read_nifti(data)
        return tuple(SegmentInfo(number=int(v), label=f"label {int(v)}") for v in _label_values(volume))


def import_nifti(data: bytes, image: SeriesSummary | CtSlice, label: int | None = None) -> ImportedOutline:
    """Put a NIfTI mask or label map (``.nii`` / ``.nii.gz``) on a series' slices by its affine.

    Args:
        data: the file's bytes (gzip or not).
        image: the series, or one loaded slice.
        label: the label value that is tumour; default the only non-zero value, or the highest
            when there are several (liver 1 / tumour 2 in LiTS / MSD-style label maps). A
            probability map (non-integer floats) counts from 0.5.

    Raises:
        OutlineImportError: not NIfTI; too large; no orientation in the header; another grid;
            no such label; nothing lands on the series.
    """
    with _damaged_file_is_a_sentence(_NIFTI_DAMAGED):
        return _import_nifti(data, image, label)


def _import_nifti(data: bytes, image: SeriesSummary | CtSlice, label: int | None) -> ImportedOutline:
    volume, affine_ras = _read_nifti(data)
    targets = _targets(image)
    if any(t.geometry is None for t in targets.slices):
        raise OutlineImportError(
            "This series' slices lack positions, so a NIfTI outline cannot be placed on them; "
            "import a DICOM SEG or a PNG mask instead."
        )
    labels = _label_values(volume)
    if not labels:
        raise OutlineImportError("The NIfTI outline is empty (every voxel is 0); check the file.")
    chosen = label if label is not None else labels[-1]
    if chosen not in labels:
        raise OutlineImportError(
            f"The NIfTI outline has no label {chosen}; its labels are {', '.join(map(str, labels))}."
        )
    inside = volume == chosen if np.issubdtype(volume.dtype, np.integer) else volume >= 0.5 * chosen
    index_to_lps = _LPS_FROM_RAS @ affine_ras
    masks: dict[int, np.ndarray] = {}
    for target in targets.slices:
        placed = _on_slice(inside, index_to_lps, target, targets.spacing_mm, "NIfTI")
        if placed is not None and placed.any():
            masks[target.index] = placed
    if not masks:
        raise OutlineImportError(
            "The NIfTI outline does not overlap this series' slices (or its affine is not in RAS+ "
            "coordinates); import the outline made on this series."
        )
    segments = tuple(SegmentInfo(number=int(v), label=f"label {int(v)}") for v in labels)
    return _outline(
        masks, targets.shape, f"NIfTI, label {chosen}, placed by its affine (RAS+)", segments=segments, segment=chosen
    )


_BAD_ORIENTATION = (
    "The NIfTI file's orientation (its qform / sform) holds invalid numbers, so it cannot be placed on the CT; "
    "export it again from the segmentation software."
)


def _read_nifti(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(volume (I, J, K), 4×4 RAS+ affine), the header checked before the voxels are read."""
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = _gunzip_capped(data)
    if len(data) >= 348 and data[344:348] in (b"n+1\0", b"ni1\0"):
        kind = nib.Nifti1Image
    elif data[4:8] in (b"n+2\0", b"ni2\0"):
        kind = nib.Nifti2Image
    else:
        raise OutlineImportError(
            "This file is not a NIfTI image (.nii or .nii.gz); import a DICOM SEG, NIfTI or PNG mask."
        )
    try:
        image = kind.from_bytes(data)
    except Exception as exc:
        raise OutlineImportError("The NIfTI file is damaged or incomplete; export it again.") from exc
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) < 1:
        raise OutlineImportError(f"The NIfTI file holds a {len(shape)}-D image; a 3-D mask is needed.")
    if math.prod(shape) > MAX_OUTLINE_VOXELS or max(shape[:2]) > MAX_SIDE_PX:  # Python ints: no overflow
        raise OutlineImportError(
            f"The NIfTI mask is {' × '.join(map(str, shape))} voxels, more than this tool reads; export the tumour "
            "mask of this series alone."
        )
    header = image.header
    try:
        _, sform_code = header.get_sform(coded=True)
        _, qform_code = header.get_qform(coded=True)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises on an impossible quaternion (e.g. an infinite qform_b)
        raise OutlineImportError(_BAD_ORIENTATION) from exc
    if not sform_code and not qform_code:
        raise OutlineImportError(
            "The NIfTI file does not say where its voxels lie (no qform or sform), so it cannot be placed on the "
            "CT; export it from the segmentation software with its orientation."
        )
    if not np.isfinite(affine).all():
        raise OutlineImportError(_BAD_ORIENTATION)
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf":  # complex or RGB voxels are no mask
        raise OutlineImportError(f"The NIfTI file holds {dtype.name} voxels, not a mask's numbers; export a label map.")
    # nibabel allocates the whole volume before it notices the file is short: a 400-byte header
    # declaring 2000 × 512 × 512 float64 voxels would take 4 GiB
    if len(data) < int(header.get_data_offset()) + math.prod(shape) * dtype.itemsize:
        raise OutlineImportError(
            "The NIfTI file holds fewer voxels than its header declares (damaged or cut short); export it again."
        )
    try:
        volume = np.asanyarray(image.dataobj).reshape(shape)
    except Exception as exc:
        raise OutlineImportError(
            "The NIfTI file's voxels cannot be read (damaged or cut short); export it again."
        ) from exc
    if np.issubdtype(volume.dtype, np.floating):
        if not np.isfinite(volume).all():
            raise OutlineImportError(
                "The NIfTI file holds voxels that are not numbers (NaN or infinite); export the mask again."
            )
        if np.array_equal(volume, np.round(volume)) and np.abs(volume).max(initial=0) <= np.iinfo(np.int32).max:
            volume = volume.astype(np.int32)
    return volume, affine


def _gunzip_capped(data: bytes) -> bytes:
    """Expand gzip data, refusing more than :data:`~core.limits.MAX_TOTAL_BYTES` (a gzip bomb)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, MAX_TOTAL_BYTES + 1)
    except zlib.error as exc:
        raise OutlineImportError("The .nii.gz file is damaged or incomplete; export it again.") from exc
    if len(out) > MAX_TOTAL_BYTES or inflater.unconsumed_tail:
        raise OutlineImportError("The .nii.gz file expands to more than this tool reads; export the tumour mask alone.")
    return out


def _label_values(volume: np.ndarray) -> list[float | int]:
    if np.issubdtype(volume.dtype, np.integer) or volume.dtype == bool:
        values = np.unique(volume)
        return [int(v) for v in values if v != 0]
    return [1] if (volume >= 0.5).any() else []  # a probability map: one "label"


# --------------------------------------------------------------------------------- PNG


def import_png_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """A PNG mask of the slice's size as a (rows, cols) bool mask; non-zero grey (or alpha) = tumour.

    Raises:
        OutlineImportError: not a PNG, another size, empty, or everything inside.
    """
    if not data.startswith(b"\x89PNG"):
        raise OutlineImportError("This file is not a PNG mask; import a PNG of the slice's size, a DICOM SEG or NIfTI.")
    # The size is checked on the header, before OpenCV allocates what the header declares.
    declared = raster_size(data)
    if declared is None:
        raise OutlineImportError(_PNG_DAMAGED)
    _check_mask_size(declared, shape)
    with _damaged_file_is_a_sentence(_PNG_DAMAGED):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OutlineImportError(_PNG_DAMAGED)
    _check_mask_size(image.shape[:2], shape)
    if image.ndim == 3:
        colour = image[..., :3].max(axis=2)
        mask = colour > 0 if colour.any() or image.shape[2] < 4 else image[..., 3] > 0
    else:
        mask = image > 0
    if not mask.any():
        raise OutlineImportError("The PNG mask is empty (every pixel is 0); check the file.")
    if mask.all():
        raise OutlineImportError("The PNG mask marks every pixel; export a mask whose background is black (0).")
    return mask


def _check_mask_size(size: tuple[int, ...], shape: tuple[int, int]) -> None:
    if tuple(size) != tuple(shape):
        raise OutlineImportError(
            f"The PNG mask is {size[1]}×{size[0]} pixels but the slice is {shape[1]}×{shape[0]}; "
            "export the mask at the slice's own size."
        )


# --------------------------------------------------------------------------------- export


def export_png(mask: np.ndarray) -> bytes:
    """The mask as an 8-bit greyscale PNG of the slice's size: tumour 255, background 0."""
    ok, encoded = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


SEG_MANUFACTURER = "icca-recurrence-dashboard (research use)"


def export_seg(
    mask: np.ndarray,
    reference: SourceReference,
    *,
    segment_label: str = "Tumour",
    series_number: int = 9001,
    patient_name: str = "",
    patient_id: str = "",
    software_version: str = "0.1.0",
) -> bytes:
    """The outline as a one-frame binary DICOM SEG referencing its source slice.

    The SEG carries: the source's StudyInstanceUID (so it files under the same study), a
    ReferencedSeriesSequence / per-frame SourceImageSequence naming the source series and SOP
    Instance UID, the FrameOfReferenceUID, and the slice's position, orientation, pixel
    spacing and thickness; one segment (SCT "Morphologically abnormal structure" /
    "Neoplasm", algorithm MANUAL). Patient name, ID, birth date and sex are empty unless
    ``patient_name`` / ``patient_id`` are given (this tool does not keep them); 3D Slicer then
    lists the SEG under an unnamed patient and still loads it onto the referenced series.

    Args:
        mask: (rows, cols) bool, the slice's size.
        reference: the slice's :class:`~core.dicomref.SourceReference`.

    Raises:
        RoiError: the mask is empty.
        OutlineImportError: the mask's size differs from the slice, or the reference lacks the
            geometry / frame of reference a SEG must carry.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise RoiError("The outline is empty; draw or import one before exporting it.")
    geometry = reference.geometry
    if geometry is None or not reference.frame_of_reference_uid:
        raise OutlineImportError(
            "This slice's header lacks its position or frame of reference, so a DICOM SEG cannot be placed on it; "
            "export the outline as PNG."
        )
    if mask.shape != geometry.shape:
        raise OutlineImportError(
            f"The outline is {mask.shape[1]}×{mask.shape[0]} pixels but the slice is "
            f"{geometry.shape[1]}×{geometry.shape[0]}; export it from the slice it was drawn on."
        )
    source = _source_stub(reference, geometry, patient_name, patient_id)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name="iCCA early-recurrence dashboard",
        software_versions=software_version,
        device_serial_number="none",
        content_label="TUMOUR",
        content_description="Tumour outline (research use)",
        series_description="iCCA tumour outline",
    )
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def _source_stub(
    reference: SourceReference, geometry: SliceGeometry, patient_name: str, patient_id: str
) -> pydicom.Dataset:
    """A header-only stand-in for the source slice, built from the reference record (no pixels)."""
    ds = pydicom.Dataset()
    ds.StudyInstanceUID = reference.study_uid
    ds.SeriesInstanceUID = reference.series_uid
    ds.SOPInstanceUID = reference.sop_uid
    ds.SOPClassUID = reference.sop_class_uid
    ds.FrameOfReferenceUID = reference.frame_of_reference_uid
    ds.Modality = reference.modality
    ds.ImagePositionPatient = [f"{v:.6g}" for v in geometry.position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in geometry.row_direction + geometry.column_direction]
    ds.PixelSpacing = [f"{v:.6g}" for v in geometry.spacing_mm]
    ds.SliceThickness = f"{reference.slice_thickness_mm:.6g}" if reference.slice_thickness_mm else "1"
    ds.Rows, ds.Columns = geometry.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 16
    ds.PatientName, ds.PatientID = patient_name, patient_id
    for keyword in (
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    ):
        setattr(ds, keyword, "")
    return ds


def read_outline(
    name: str, data: bytes, image: SeriesSummary | CtSlice, shape: tuple[int, int], segment: int | None = None
) -> ImportedOutline:
    """Import an outline file whatever it is: DICOM SEG, NIfTI, or a PNG mask of the slice's size.

    Args:
        name: the file's name (only to recognise a gzipped NIfTI).
        image: the series (SEG and NIfTI are placed on its slices) or, without a series, the slice.
        shape: (rows, cols) of the slice on screen (a PNG mask goes on that slice).
        segment: the SEG segment number or NIfTI label to import; ``None``: the default
            (a segment named as a tumour / the highest label).

    Raises:
        OutlineImportError: not an outline file, or one that does not fit the image.
    """
    from core.series import dicom_object_kind, is_nifti, read_header

    if data.startswith(b"\x89PNG"):
        mask = import_png_mask(data, shape)
        return ImportedOutline(masks={0: mask}, default_index=0, shape=tuple(shape), how="PNG mask")
    if is_nifti(data, name):
        return import_nifti(data, image, label=segment)
    header = read_header(data)
    if header is not None and (dicom_object_kind(header) or "").startswith("a DICOM segmentation"):
        return import_seg(data, image, segment=segment)
    raise OutlineImportError(
        "This file is not an outline this tool can import; use a DICOM SEG, a NIfTI file or a PNG mask."
    )
