"""Group an upload's DICOM files into series, describe each from headers only, and load one slice.

Pages call :func:`scan_upload` once per upload (cache it by a sha256 of the content), list
``scan.series`` for the user to pick one, then :func:`load_series_slice` for the slice on
the slider. Pixels are decoded only there (and in :func:`decode_report`, for ``inspect``).

Decisions (each tested in ``tests/core/test_series.py``):

* **Order.** Slices are sorted by their position along the slice normal,
  ImagePositionPatient · (row direction × column direction), ascending (for an axial series
  feet → head), never by file name or InstanceNumber. If any slice of a stack lacks a usable
  position / orientation, the whole stack is sorted by InstanceNumber (then file name), its
  positions are unknown (``position_mm`` is ``None``) and a note says so.
* **Several sizes or orientations in one series** (a localizer filed with the axial slices):
  the series is split into stacks of one size and orientation; the largest keeps the series'
  key, the others are listed as their own entries ("…, part 2") so every slice stays reachable.
* **The same SOP Instance twice** (a file uploaded twice): kept once, noted.
* **Two different slices at one position** (two acquisitions in one series): both kept,
  ordered by InstanceNumber, noted.
* **Multi-frame (enhanced) CT**: listed, not loadable, with a sentence saying how to export.
* **Non-CT files**: image series of other modalities are listed with ``usable = False``; a
  DICOM SEG is listed in ``scan.segmentations`` (it can be imported as an outline), a NIfTI
  file or a PNG in ``scan.others``; RT, SR, DICOMDIR and non-images are listed and ignored.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError

from core.archive import UploadedFile, unpack_upload
from core.dicom_codecs import compression_of, lossy_reason
from core.dicomref import SliceGeometry, geometry_of, uid_hash
from core.errors import UploadRefusedError, UserFacingError
from core.imaging import CtSlice, file_window, load_slice
from core.limits import MAX_SIDE_PX

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_MULTIFRAME_CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}  # Enhanced / Legacy
# Two slices closer than this along the normal share a position (mm; scanners print 0.001 mm).
_SAME_POSITION_MM = 0.01

_NON_IMAGE_MODALITIES = {
    "SEG": "a DICOM segmentation (SEG)",
    "RTSTRUCT": "an RT structure set (RTSTRUCT)",
    "RTPLAN": "an RT plan (RTPLAN)",
    "RTRECORD": "an RT treatment record",
    "SR": "a DICOM structured report (SR)",
    "KO": "a key-object selection (KO)",
    "PR": "a presentation state (PR)",
    "DOC": "an encapsulated document (DOC)",
    "REG": "a registration (REG)",
}


# --------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SliceEntry:
    """One slice of a series, from its header.

    Attributes:
        file_index: index of its file in :attr:`UploadScan.files`.
        sop_uid: SOPInstanceUID ("" when absent).
        position_mm: position along the slice normal (ImagePositionPatient · normal), mm, or ``None``.
        instance_number: InstanceNumber, or ``None``.
        geometry: the slice's pixel grid in patient coordinates, or ``None``.
    """

    file_index: int
    sop_uid: str
    position_mm: float | None
    instance_number: int | None
    geometry: SliceGeometry | None


@dataclass(frozen=True)
class SeriesSummary:
    """One series (or one stack of a series) as the picker lists it; headers only.

    Attributes:
        key: stable key for this upload ("u-…" hash of the SeriesInstanceUID, "-2" … for further
            stacks); safe to store, it is not the UID.
        series_uid: SeriesInstanceUID (in memory only; store ``key``).
        modality: DICOM Modality ("CT", "MR", …).
        description: SeriesDescription ("" when absent).
        slices: the slices in display order (see the module's decisions).
        rows, columns: image size in pixels.
        pixel_spacing_mm: (row, col) PixelSpacing of the first slice, or ``None``.
        slice_thickness_mm: SliceThickness, or ``None``.
        slice_spacing_mm: median distance between neighbouring slice positions, or ``None``.
        kernel: ConvolutionKernel ("" when absent; several values joined by "/").
        contrast_given: whether contrast was given (tags or description say so).
        contrast_evidence: what ``contrast_given`` rests on, in words.
        compression: how the pixel data is stored (several names joined by ", ").
        decodable: every slice's compression has a decoder installed.
        lossy: why the HU are approximate (lossy compression), or ``None``.
        window: the first slice's own (level, width) in HU, or ``None``.
        sorted_by: "position" or "instance number".
        notes: plain sentences about duplicates, missing positions, split stacks.
        unusable: why this series cannot be loaded as CT (one sentence), or ``None`` when it can.
        frame_of_reference_uid: FrameOfReferenceUID of the first slice ("" when absent; in memory only).
    """

    key: str
    series_uid: str
    modality: str
    description: str
    slices: tuple[SliceEntry, ...]
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None
    kernel: str
    contrast_given: bool
    contrast_evidence: str
    compression: str
    decodable: bool
    lossy: str | None
    window: tuple[float, float] | None
    sorted_by: str
    notes: tuple[str, ...] = ()
    unusable: str | None = None
    frame_of_reference_uid: str = ""

    @property
    def slice_count(self) -> int:
        return len(self.slices)

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT"

    @property
    def usable(self) -> bool:
        return self.unusable is None

    def contrast_warning(self) -> str | None:
        """One sentence when this series was taken with contrast (the model is for plain CT)."""
        if not self.contrast_given:
            return None
        return (
            f"This series was taken with contrast ({self.contrast_evidence}); the model was trained on plain "
            "(non-contrast) CT, so choose the plain series if there is one."
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain types for JSON and the page; no UIDs (``key`` is a hash)."""
        positions = [s.position_mm for s in self.slices if s.position_mm is not None]
        return {
            "key": self.key,
            "modality": self.modality,
            "description": self.description,
            "slices": self.slice_count,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "slice_thickness_mm": self.slice_thickness_mm,
            "slice_spacing_mm": self.slice_spacing_mm,
            "position_range_mm": [min(positions), max(positions)] if positions else None,
            "kernel": self.kernel,
            "contrast_given": self.contrast_given,
            "contrast_evidence": self.contrast_evidence,
            "compression": self.compression,
            "decodable": self.decodable,
            "lossy": self.lossy,
            "window": list(self.window) if self.window else None,
            "sorted_by": self.sorted_by,
            "notes": list(self.notes),
            "usable": self.usable,
            "unusable": self.unusable,
        }


@dataclass(frozen=True)
class OtherFile:
    """A file of the upload that is not a slice of an image series.

    Attributes:
        file_index: index in :attr:`UploadScan.files`.
        name: its name in the upload.
        kind: "segmentation" (DICOM SEG), "nifti", "png", "jpeg", "dicom" (another DICOM object)
            or "unreadable".
        what: what it is, in words ("a DICOM segmentation (SEG)").
        importable: it can be imported as an outline (SEG, NIfTI, PNG mask).
    """

    file_index: int
    name: str
    kind: str
    what: str
    importable: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "what": self.what, "importable_as_outline": self.importable}


@dataclass(frozen=True)
class UploadScan:
    """An upload read header-first.

    Attributes:
        files: every file, in memory; slices and other files point into it by index.
        series: image series, CT first, each sorted (see :class:`SeriesSummary`).
        others: files that are not slices of an image series, SEGs first.
    """

    files: tuple[UploadedFile, ...]
    series: tuple[SeriesSummary, ...]
    others: tuple[OtherFile, ...] = field(default=())

    @property
    def ct_series(self) -> tuple[SeriesSummary, ...]:
        """The series a user may pick: CT and loadable."""
        return tuple(s for s in self.series if s.is_ct and s.usable)

    @property
    def segmentations(self) -> tuple[OtherFile, ...]:
        """Files that can be offered as an outline (SEG, NIfTI, PNG)."""
        return tuple(o for o in self.others if o.importable)

    def get(self, key: str) -> SeriesSummary:
        """The series with this key.

        Raises:
            UserFacingError: no such series in this upload.
        """
        for series in self.series:
            if series.key == key:
                return series
        raise UserFacingError("That series is not in this upload; choose one from the list.")

    def file_bytes(self, file_index: int) -> bytes:
        return self.files[file_index].data

    def without_unused_bytes(self) -> UploadScan:
        """This scan holding only the bytes a page can still use: the slices of the CT series offered
        (:attr:`ct_series`) and the outline files (:attr:`segmentations`).

        A page keeps its scan for as long as the case is on screen (every slider move loads a slice
        from it); an MR series or an RT file in the same export would otherwise stay in memory with
        it. The other files keep their names and indices, with empty data.
        """
        needed = {entry.file_index for series in self.ct_series for entry in series.slices}
        needed |= {other.file_index for other in self.segmentations}
        files = tuple(
            item if index in needed else UploadedFile(item.name, b"") for index, item in enumerate(self.files)
        )
        return UploadScan(files=files, series=self.series, others=self.others)


@dataclass(frozen=True)
class SeriesSlice:
    """One loaded slice of a series.

    Attributes:
        ct: the slice (HU, spacing, source reference).
        series_key: its series' :attr:`SeriesSummary.key`.
        index: its index in the series' display order.
        position_mm: its position along the slice normal, mm, or ``None`` when unknown.
    """

    ct: CtSlice
    series_key: str
    index: int
    position_mm: float | None


@dataclass(frozen=True)
class UploadContents:
    """What a page keeps of an upload once it has read it, in place of the uploaded bytes.

    Exactly one attribute is set.

    Attributes:
        scan: the DICOM files' scan (series, outlines), holding only the bytes still needed
            (see :meth:`UploadScan.without_unused_bytes`).
        export: a PNG/JPEG export, already decoded (its file is not needed again).
    """

    scan: UploadScan | None = None
    export: CtSlice | None = None


# --------------------------------------------------------------------------------- scanning


def read_upload(files: Sequence[tuple[str, bytes]]) -> UploadContents:
    """Read an upload once, so that its raw bytes (a ZIP of up to the upload cap) need not be kept.

    One PNG/JPEG file is decoded as an export; anything else is scanned (see :func:`scan_upload`),
    a ZIP expanded, and the scan keeps only what can still be shown or imported.

    Raises:
        UserFacingError: the upload cannot be read (see :func:`scan_upload` and
            :func:`core.imaging.load_slice`), one sentence.
    """
    if len(files) == 1 and is_raster(files[0][1]):
        return UploadContents(export=load_slice(files[0][1], files[0][0]))
    return UploadContents(scan=scan_upload(files).without_unused_bytes())


def scan_upload(files: Sequence[tuple[str, bytes]]) -> UploadScan:
    """Read every header of an upload (folder, many files, or one ZIP) and group the series.

    Args:
        files: (name, bytes) pairs as uploaded.

    Returns:
        The scan: series (CT first, then by description), other files.

    Raises:
        UploadRefusedError: see :func:`core.archive.unpack_upload`; also a CT image larger than
            :data:`~core.limits.MAX_SIDE_PX` a side, and an upload without any DICOM image or
            outline file. Nothing has been decoded when these are raised.
    """
    return scan_files(unpack_upload(files))


def scan_files(files: Sequence[UploadedFile]) -> UploadScan:
    """:func:`scan_upload` for files already unpacked."""
    headers: dict[str, list[tuple[int, pydicom.Dataset]]] = {}
    others: list[OtherFile] = []
    for index, item in enumerate(files):
        ds = read_header(item.data)
        if ds is None:
            others.append(_other_non_dicom(index, item))
            continue
        try:
            what = dicom_object_kind(ds)
            rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
        except Exception:  # last line of defence: a header value _readable did not foresee
            others.append(OtherFile(index, item.name, "unreadable", "a DICOM file whose header cannot be read", False))
            continue
        if what is not None:
            kind = "segmentation" if what.startswith("a DICOM segmentation") else "dicom"
            others.append(OtherFile(index, item.name, kind, what, importable=kind == "segmentation"))
            continue
        if max(rows, cols) > MAX_SIDE_PX:
            modality = str(ds.get("Modality", "") or "").upper()
            if modality == "CT":
                raise UploadRefusedError(
                    f"The CT image {item.name!r} is {cols}×{rows} pixels, larger than {MAX_SIDE_PX} px a side, "
                    "so the upload was not read; export the series at its original size."
                )
            others.append(OtherFile(index, item.name, "dicom", f"an image of {cols}×{rows} pixels, too large", False))
            continue
        headers.setdefault(str(ds.get("SeriesInstanceUID", "") or "").strip(), []).append((index, ds))
    if not headers and not others:
        raise UploadRefusedError("The upload holds no files; choose a folder, DICOM files or a ZIP.")
    series: list[SeriesSummary] = []
    for series_uid, members in headers.items():
        try:
            series.extend(_summaries(series_uid, members, files))
        except Exception as exc:  # last line of defence, as in core.imaging: a sentence, never a traceback
            raise UploadRefusedError(
                "A series in this upload has a header this tool cannot read; export the series again from the PACS."
            ) from exc
    series.sort(key=lambda s: (not s.is_ct, not s.usable, s.description.lower(), s.key))
    others.sort(key=lambda o: (not o.importable, o.kind != "segmentation", o.name))
    if not series and not any(o.importable for o in others):
        raise UploadRefusedError(
            "The upload holds no DICOM image (found: "
            + ", ".join(sorted({o.what for o in others}))[:200]
            + "); upload the CT series exported from the PACS."
        )
    return UploadScan(files=tuple(files), series=tuple(series), others=tuple(others))


def read_header(data: bytes) -> pydicom.Dataset | None:
    """The DICOM header (everything before the pixel data), or ``None`` when not DICOM.

    ``stop_before_pixels`` keeps pydicom from even reading the pixel data element. A file
    without the 128-byte preamble is accepted when it parses and names a SOP class or modality.
    """
    try:
        return _readable(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        except Exception:
            return None
        try:
            return _readable(ds) if "SOPClassUID" in ds or "Modality" in ds else None
        except Exception:
            return None
    except Exception:
        return None


# The header values this module and its callers read with ``ds.get``; pydicom converts a value on
# first access and raises then on a damaged one (a 3-byte Rows, "abc" for NumberOfFrames).
_HEADER_KEYWORDS = (
    "Rows",
    "Columns",
    "Modality",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "NumberOfFrames",
    "InstanceNumber",
    "SliceThickness",
    "ConvolutionKernel",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "LossyImageCompression",
    "LossyImageCompressionMethod",
)
_META_KEYWORDS = ("MediaStorageSOPClassUID", "TransferSyntaxUID")


# pydicom warns of a malformed value (and keeps its raw text) when it first converts it; our readers
# then report it in one sentence (core.imaging), so its warning would only be a second, raw message.
# One narrow filter at import: warnings.catch_warnings() per read is not thread-safe in a server.
warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning, module=r"pydicom\.")


def _readable(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` with each value of :data:`_HEADER_KEYWORDS` (and of its file meta, :data:`_META_KEYWORDS`)
    that pydicom cannot convert made empty.

    A damaged value then reads as missing (Rows 0, no position) instead of raising wherever it
    is first read; loading that slice says which value is wrong (:func:`core.imaging.load_slice`).
    """
    meta = getattr(ds, "file_meta", None)
    for where, keywords in ((ds, _HEADER_KEYWORDS), (meta, _META_KEYWORDS)):
        for keyword in keywords if where is not None else ():
            tag = tag_for_keyword(keyword)
            if tag is None or tag not in where:
                continue
            try:
                where[tag]
            except Exception:
                where[tag] = DataElement(tag, dictionary_VR(tag), None)
    return ds


def dicom_object_kind(ds: pydicom.Dataset) -> str | None:
    """What a DICOM object is when it is not an image slice ("a DICOM segmentation (SEG)"), else ``None``."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop_class == SEG_SOP_CLASS or modality == "SEG":
        return _NON_IMAGE_MODALITIES["SEG"]
    if meta_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "a DICOMDIR index"
    if modality in _NON_IMAGE_MODALITIES:
        return _NON_IMAGE_MODALITIES[modality]
    if "Rows" not in ds or "Columns" not in ds:
        return f"a DICOM object without an image{f' ({modality})' if modality else ''}"
    return None


def is_nifti(data: bytes, name: str = "") -> bool:
    """NIfTI-1 or NIfTI-2 by its magic, or gzip-compressed with a ``.nii.gz`` name."""
    if (len(data) >= 348 and data[344:348] in (b"n+1\0", b"ni1\0")) or data[4:8] in (b"n+2\0", b"ni2\0"):
        return True
    return data[:2] == b"\x1f\x8b" and name.lower().endswith((".nii.gz", ".nii"))


def _other_non_dicom(index: int, item: UploadedFile) -> OtherFile:
    data = item.data
    if is_nifti(data, item.name):
        return OtherFile(index, item.name, "nifti", "a NIfTI volume", True)
    if data.startswith(b"\x89PNG"):
        return OtherFile(index, item.name, "png", "a PNG image", True)
    if data.startswith(b"\xff\xd8\xff"):
        return OtherFile(index, item.name, "jpeg", "a JPEG image", False)
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return OtherFile(index, item.name, "unreadable", "a ZIP inside the upload (not opened)", False)
    return OtherFile(index, item.name, "unreadable", "not a DICOM, NIfTI or PNG file", False)


def _summaries(
    series_uid: str, members: list[tuple[int, pydicom.Dataset]], files: Sequence[UploadedFile]
) -> list[SeriesSummary]:
    """One summary per stack (size × orientation) of a series, the largest stack first."""
    base_key = uid_hash(series_uid) if series_uid else "no-series-uid"
    # drop repeated files of the same SOP instance
    seen: set[str] = set()
    unique: list[tuple[int, pydicom.Dataset]] = []
    repeats = 0
    for index, ds in members:
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        if sop and sop in seen:
            repeats += 1
            continue
        seen.add(sop)
        unique.append((index, ds))
    stacks: dict[tuple[Any, ...], list[tuple[int, pydicom.Dataset, SliceGeometry | None]]] = {}
    for index, ds in unique:
        geometry = geometry_of(ds)
        orientation = (
            tuple(round(v, 2) for v in geometry.row_direction + geometry.column_direction) if geometry else None
        )
        stacks.setdefault((_int(ds.get("Rows")), _int(ds.get("Columns")), orientation), []).append(
            (index, ds, geometry)
        )
    # slices without geometry join the largest stack of their size (their orientation is unknown)
    for key in [k for k in stacks if k[2] is None]:
        homes = [k for k in stacks if k[2] is not None and k[:2] == key[:2]]
        if homes:
            home = max(homes, key=lambda k: len(stacks[k]))
            stacks[home].extend(stacks.pop(key))
    ordered = sorted(stacks.values(), key=len, reverse=True)
    out: list[SeriesSummary] = []
    for part, stack in enumerate(ordered, start=1):
        key = base_key if part == 1 else f"{base_key}-{part}"
        notes: list[str] = []
        if repeats and part == 1:
            notes.append(f"{repeats} repeated file(s) of the same slice were ignored.")
        if len(ordered) > 1:
            rows, cols = _int(stack[0][1].get("Rows")), _int(stack[0][1].get("Columns"))
            notes.append(
                f"Part {part} of {len(ordered)} of this series: its slices of one size and orientation ({cols}×{rows})."
            )
        out.append(_summary(key, series_uid, stack, files, notes, part))
    return out


def _summary(
    key: str,
    series_uid: str,
    stack: list[tuple[int, pydicom.Dataset, SliceGeometry | None]],
    files: Sequence[UploadedFile],
    notes: list[str],
    part: int,
) -> SeriesSummary:
    entries, sorted_by, sort_notes = _sorted_entries(stack, files)
    notes.extend(sort_notes)
    first = pydicom.Dataset()
    for entry in entries[:1]:
        first = next(ds for index, ds, _ in stack if index == entry.file_index)
    datasets = [ds for _, ds, _ in stack]
    modality = str(first.get("Modality", "") or "").strip().upper()
    description = _text(first.get("SeriesDescription")) + (f" (part {part})" if part > 1 else "")
    compressions = [compression_of(ds) for ds in datasets]
    names = list(dict.fromkeys(c.name for c in compressions))
    lossy = next((reason for reason in (lossy_reason(ds) for ds in datasets) if reason), None)
    contrast, evidence = contrast_of(first)
    positions = [e.position_mm for e in entries if e.position_mm is not None]
    steps = np.diff(sorted(positions)) if len(positions) > 1 else np.array([])
    steps = steps[steps > _SAME_POSITION_MM]
    geometry = entries[0].geometry if entries else None
    spacing = geometry.spacing_mm if geometry else _spacing(first)
    unusable = None
    if modality != "CT":
        article = "an" if modality[:1] in tuple("AEFHILMNORSX") else "a"
        unusable = f"This series is {article} {modality or 'unknown-modality'} series; a CT is needed."
    elif _int(first.get("NumberOfFrames")) > 1 or str(first.get("SOPClassUID", "")) in _MULTIFRAME_CT_SOP_CLASSES:
        unusable = (
            "This series is stored as one multi-frame (enhanced) CT object; export it from the PACS as "
            "single-frame CT images."
        )
    elif not all(c.decodable for c in compressions):
        bad = next(c for c in compressions if not c.decodable)
        unusable = f"This series is compressed with {bad.name}, which this installation cannot decode."
    return SeriesSummary(
        key=key,
        series_uid=series_uid,
        modality=modality,
        description=description,
        slices=tuple(entries),
        rows=_int(first.get("Rows")),
        columns=_int(first.get("Columns")),
        pixel_spacing_mm=spacing,
        slice_thickness_mm=_float(first.get("SliceThickness")),
        slice_spacing_mm=round(float(np.median(steps)), 4) if steps.size else None,
        kernel="/".join(_values(first.get("ConvolutionKernel"))),
        contrast_given=contrast,
        contrast_evidence=evidence,
        compression=", ".join(names),
        decodable=all(c.decodable for c in compressions),
        lossy=lossy,
        window=file_window(first) if modality == "CT" else None,
        sorted_by=sorted_by,
        notes=tuple(notes),
        unusable=unusable,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or "").strip(),
    )


def _sorted_entries(
    stack: list[tuple[int, pydicom.Dataset, SliceGeometry | None]], files: Sequence[UploadedFile]
) -> tuple[list[SliceEntry], str, list[str]]:
    """Slices in display order, how they were ordered, and notes."""
    entries = [
        SliceEntry(
            file_index=index,
            sop_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
            position_mm=geometry.offset_mm if geometry else None,
            instance_number=_int_or_none(ds.get("InstanceNumber")),
            geometry=geometry,
        )
        for index, ds, geometry in stack
    ]
    notes: list[str] = []
    missing = sum(e.geometry is None for e in entries)
    if missing == 0:
        # one normal for the stack (they share an orientation), so positions compare
        normal = entries[0].geometry.normal  # type: ignore[union-attr]
        entries = [
            SliceEntry(
                e.file_index, e.sop_uid, float(np.dot(e.geometry.position, normal)), e.instance_number, e.geometry
            )  # type: ignore[union-attr]
            for e in entries
        ]
        entries.sort(key=lambda e: (e.position_mm, _instance_key(e), files[e.file_index].name))
        shared: set[int] = set()
        for i, (a, b) in enumerate(itertools.pairwise(entries)):
            if abs(b.position_mm - a.position_mm) < _SAME_POSITION_MM:  # type: ignore[operator]
                shared.update((i, i + 1))
        if shared:
            notes.append(
                f"{len(shared)} slices share a position with another slice (two acquisitions in one series?); "
                "at each such position they are ordered by InstanceNumber."
            )
        return entries, "position", notes
    entries = [SliceEntry(e.file_index, e.sop_uid, None, e.instance_number, e.geometry) for e in entries]
    entries.sort(key=lambda e: (_instance_key(e), files[e.file_index].name))
    notes.append(
        f"{missing} of {len(entries)} slices have no usable ImagePositionPatient / ImageOrientationPatient, so the "
        "series is ordered by InstanceNumber and slice positions are unknown."
    )
    return entries, "instance number", notes


def _instance_key(entry: SliceEntry) -> tuple[int, int]:
    return (0, entry.instance_number) if entry.instance_number is not None else (1, 0)


# Words in a SeriesDescription that say contrast was or was not given (English, German, Japanese).
_CONTRAST_WORDS = re.compile(
    r"(c\+|\bcontrast\b|\benhanced?\b|\barterial\b|\bportal\b|\bvenous\b|\bdelay(ed)?\b|\bequilibrium\b|"
    r"\bnephrographic\b|\bcect\b|\bkm\b|造影)",
    re.IGNORECASE,
)
# A negation absorbs the contrast word it negates ("W/O CONTRAST", "non-contrast enhanced", "ohne KM"), so
# that what is left after removing the plain phrases holds a contrast word only if one was really named.
_NEGATED_CONTRAST = r"\b(?:non|w/?o|without|no|ohne|pre)[- ]?(?:iv[- ]?)?(?:contrast|con|enhanced?|km)\b(?:[- ](?:enhanced?|contrast)\b)?"
# "C-" only standing alone ("ABD C- 5mm", "CAP(C-)"): "C-A-P" is chest-abdomen-pelvis, not "without contrast".
_PLAIN_WORDS = re.compile(
    rf"({_NEGATED_CONTRAST}|\bplain\b|\bunenhanced\b|\bnative?\b|\bnect\b|\bnc\b|\bw/?o\b|\bwithout\b|"
    r"\bc-(?=[\s.,;)]|$)|単純)",
    re.IGNORECASE,
)
NO_CONTRAST_EVIDENCE = "no contrast tag is set and the description does not mention contrast"
_CONTRAST_TAGS = (
    "ContrastBolusAgent",
    "ContrastBolusAgentSequence",
    "ContrastBolusRoute",
    "ContrastBolusVolume",
    "ContrastBolusTotalDose",
    "ContrastBolusIngredient",
    "ContrastBolusStartTime",
    "ContrastBolusUsageSequence",
)
_NONE_VALUES = {"", "NONE", "NO", "N/A", "NA", "0", "NIL", "-", "NONE USED", "NO CONTRAST"}


def contrast_of(ds: pydicom.Dataset) -> tuple[bool, str]:
    """Whether contrast was given, and the evidence in words.

    Any Contrast/Bolus tag with a real value (not empty, "NONE", "0") means yes; so does a
    SeriesDescription naming contrast or a contrast phase ("C+", "arterial", "portal", "造影")
    unless it also says plain ("non-contrast", "単純"). The tags win over a "plain" description:
    a warning too many is cheaper than a contrast series analysed as plain.
    """
    description = _text(ds.get("SeriesDescription"))
    for keyword in _CONTRAST_TAGS:
        try:
            value = ds.get(keyword)
        except Exception:
            continue
        if value is None:
            continue
        if isinstance(value, pydicom.Sequence):
            if len(value):
                return True, f"{keyword} is present"
            continue
        text = "/".join(_values(value)).strip()
        if text.upper() in _NONE_VALUES:
            continue
        try:
            if keyword in ("ContrastBolusVolume", "ContrastBolusTotalDose") and float(text) <= 0:
                continue
        except ValueError:
            pass
        shown = text if len(text) <= 40 else text[:39] + "…"
        plain = " although the description says plain" if _PLAIN_WORDS.search(description) else ""
        return True, f"{keyword} is {shown!r}{plain}"
    # A phase word left once the "plain" phrases are removed wins ("C-A-P PORTAL", "non-contrast + arterial"):
    # a warning too many is cheaper than a portal-venous series analysed as plain.
    match = _CONTRAST_WORDS.search(_PLAIN_WORDS.sub(" ", description))
    if match:
        return True, f"the description {description!r} mentions {match.group(0)!r}"
    if _PLAIN_WORDS.search(description):
        return False, f"the description {description!r} says plain and no contrast tag is set"
    return False, NO_CONTRAST_EVIDENCE


# --------------------------------------------------------------------------------- loading


def load_series_slice(scan: UploadScan, series_key: str, index: int) -> SeriesSlice:
    """Decode one slice of a series as a :class:`~core.imaging.CtSlice` (HU, spacing, source reference).

    Args:
        scan: the upload's scan.
        series_key: :attr:`SeriesSummary.key`.
        index: 0-based index in the series' display order (clamped by the caller's slider).

    Raises:
        UserFacingError: unknown series, index out of range, a series that cannot be loaded, or
            the slice's own problem (see :func:`core.imaging.load_slice`) — one sentence each.
    """
    series = scan.get(series_key)
    if series.unusable:
        raise UserFacingError(series.unusable)
    if not 0 <= index < series.slice_count:
        raise UserFacingError(
            f"This series has {series.slice_count} slices; choose one between 1 and {series.slice_count}."
        )
    entry = series.slices[index]
    item = scan.files[entry.file_index]
    ct = load_slice(item.data, item.name)
    if ct.shape != (series.rows, series.columns):
        raise UserFacingError(
            f"Slice {index + 1} of this series is {ct.shape[1]}×{ct.shape[0]} pixels, not the series' "
            f"{series.columns}×{series.rows}; export the series again from the PACS."
        )
    return SeriesSlice(ct=ct, series_key=series_key, index=index, position_mm=entry.position_mm)


def find_slice(scan: UploadScan, hashed: dict[str, Any], secret: bytes | None = None) -> tuple[str, int] | None:
    """Where a saved case's slice is in this upload: (series key, index), or ``None``.

    Args:
        hashed: :meth:`core.dicomref.SourceReference.hashed` as saved with the case.
        secret: the same secret the hashes were made with.
    """
    for series in scan.series:
        if uid_hash(series.series_uid, secret) != hashed.get("series_uid_hash"):
            continue
        for index, entry in enumerate(series.slices):
            if entry.sop_uid and uid_hash(entry.sop_uid, secret) == hashed.get("sop_uid_hash"):
                return series.key, index
    return None


def decode_report(scan: UploadScan, series_key: str) -> dict[str, Any]:
    """Decode every slice of a series: HU range and decode status (for ``python -m core inspect``).

    Returns:
        ``{"decoded": n_ok, "failed": n_bad, "status": "ok" | first failure's sentence,
        "hu_min": float | None, "hu_max": float | None}``.
    """
    series = scan.get(series_key)
    if series.unusable:
        return {"decoded": 0, "failed": series.slice_count, "status": series.unusable, "hu_min": None, "hu_max": None}
    low, high, ok, failures = np.inf, -np.inf, 0, []
    for index in range(series.slice_count):
        try:
            ct = load_series_slice(scan, series_key, index).ct
        except UserFacingError as error:
            failures.append(str(error))
            continue
        ok += 1
        low, high = min(low, float(ct.pixels.min())), max(high, float(ct.pixels.max()))
    return {
        "decoded": ok,
        "failed": len(failures),
        "status": "ok" if not failures else failures[0],
        "hu_min": low if ok else None,
        "hu_max": high if ok else None,
    }


# --------------------------------------------------------------------------------- small readers


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _int_or_none(value: object) -> int | None:
    try:
        return None if value is None or value == "" else int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


def _text(value: object) -> str:
    text = " ".join(_values(value))
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    try:
        values = [float(v) for v in ds.get("PixelSpacing") or []]
    except (TypeError, ValueError):
        return None
    return (values[0], values[1]) if len(values) == 2 and min(values) > 0 else None


# --------------------------------------------------------------------------------- for the page


def upload_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """sha256 identifying an upload: the content of one file, or every (name, content) of several."""
    if len(files) == 1:
        return hashlib.sha256(files[0][1]).hexdigest()
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def is_raster(data: bytes) -> bool:
    """A PNG or JPEG file (a viewer's export), by its magic bytes."""
    return data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8\xff")


def series_label(series: SeriesSummary) -> str:
    """One line for the series picker: description, slices, thickness, kernel, contrast."""
    parts = [series.description or "(no description)", f"{series.slice_count} slice{'s' * (series.slice_count != 1)}"]
    if series.slice_thickness_mm is not None:
        parts.append(f"{series.slice_thickness_mm:g} mm")
    if series.kernel:
        parts.append(f"kernel {series.kernel}")
    # PACS exports often strip the contrast tags: without evidence either way, say so rather than "plain".
    if series.contrast_given:
        parts.append("CONTRAST")
    else:
        parts.append("contrast not recorded" if series.contrast_evidence == NO_CONTRAST_EVIDENCE else "plain")
    return " · ".join(parts)


def no_ct_sentence(scan: UploadScan) -> str:
    """Why an upload offers no CT series to pick, in one sentence."""
    if scan.segmentations and not scan.series:
        return "This upload holds only an outline; upload the CT series first, then import the outline."
    unusable = [s for s in scan.series if s.is_ct and not s.usable]
    if unusable:
        return unusable[0].unusable or "The CT series in this upload cannot be loaded."
    kinds = sorted({s.modality for s in scan.series} | {o.what for o in scan.others})
    return f"This upload holds no CT series (found: {', '.join(kinds)[:200]}); upload the CT exported from the PACS."
