"""Read one CT slice from uploaded bytes and turn it into display and model grey values.

DICOM: pixel values become Hounsfield units through the modality LUT
(RescaleSlope / RescaleIntercept); pixel spacing comes from PixelSpacing (mm).
PNG / JPEG: the export is already windowed (grey 0–255), carries no HU and no
spacing; callers must say so on screen.

Identifying DICOM tags (names, birth dates) are never copied out of the dataset: the
only identifier kept is ``PatientID``, and only so the caller can derive a
pseudonymised key from it (see :mod:`core.pseudonym`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

import cv2
import numpy as np
import pydicom
import pydicom.pixels
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from core.dicom_codecs import (
    compression_of,
    decode_failed,
    lossy_reason,
    register_decoders,
    undecodable_message,
)
from core.dicomref import SourceReference, source_reference_of
from core.errors import UnreadableImageError, UserFacingError, WrongModalityError
from core.limits import MAX_SIDE_PX, MIN_SIDE_PX
from core.preprocess import PreprocessConfig

register_decoders()  # JPEG Extended (12-bit) and JPEG Lossless through imagecodecs (see core.dicom_codecs)


# Display presets (level, width) in HU. Liver first: plain-CT iCCA sits ~20 HU below liver.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "Liver (L60 / W160)": (60.0, 160.0),
    "Abdomen (L40 / W400)": (40.0, 400.0),
    "Wide soft tissue (L50 / W500)": (50.0, 500.0),
    "Bone (L400 / W1800)": (400.0, 1800.0),
}

_T = TypeVar("_T")

SourceKind = Literal["dicom", "png", "jpeg"]
SpacingSource = Literal["header", "user"]
# Plausible in-plane pixel sizes, mm/px (a 0.01 mm pixel is a microscope, 10 mm is not a CT slice).
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 10.0


@dataclass(frozen=True)
class CtSlice:
    """One 2-D slice ready for windowing.

    Attributes:
        pixels: (rows, cols) float32; HU when ``is_hu`` else grey 0–255.
        is_hu: whether ``pixels`` are Hounsfield units.
        spacing_mm: (row, col) pixel size in mm, or ``None`` when unknown.
        source_kind: "dicom", "png" or "jpeg".
        modality: DICOM Modality, or "" for raster exports.
        patient_id: DICOM PatientID for pseudonymisation only, never stored or logged.
        spacing_source: "header" (PixelSpacing), "user" (entered for this image) or ``None``.
        spacing_problem: why a DICOM's own spacing is unusable, for the page to say; ``None`` otherwise.
        export_window: (level, width) in HU a PNG/JPEG export was made with, as the user stated it
            (its grey values were mapped back to HU with it); ``None`` otherwise.
        file_window: (level, width) in HU from the DICOM's own WindowCenter / WindowWidth (first
            value when several), ``None`` when absent or unusable. For display only: the model's
            window always comes from its checkpoint.
        compression: how the DICOM's pixel data was stored ("JPEG 2000 lossless", "uncompressed
            (explicit VR little endian)", …); "" for raster exports.
        lossy: why the HU are approximate (lossy compression now or earlier), ``None`` when not.
        source_ref: UIDs and geometry of the DICOM slice (no patient identifiers), for exporting
            an outline as DICOM SEG; ``None`` for raster exports or a header without UIDs.
    """

    pixels: np.ndarray
    is_hu: bool
    spacing_mm: tuple[float, float] | None
    source_kind: SourceKind
    modality: str = ""
    patient_id: str | None = None
    spacing_source: SpacingSource | None = None
    spacing_problem: str | None = None
    export_window: tuple[float, float] | None = None
    file_window: tuple[float, float] | None = None
    compression: str = ""
    lossy: str | None = None
    source_ref: SourceReference | None = None

    @property
    def is_raster(self) -> bool:
        """A PNG/JPEG export (whatever was entered for it), as opposed to a DICOM."""
        return self.source_kind != "dicom"

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def pixel_area_mm2(self) -> float | None:
        """Area of one pixel in mm², or ``None`` without spacing."""
        if self.spacing_mm is None:
            return None
        return self.spacing_mm[0] * self.spacing_mm[1]

    def summary(self) -> dict[str, object]:
        """Facts for ``python -m core inspect`` and the UI (no identifiers)."""
        values = self.pixels
        return {
            "source": self.source_kind,
            "modality": self.modality or "none (raster export)",
            "rows": self.shape[0],
            "columns": self.shape[1],
            "pixel_spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "pixel_spacing_problem": self.spacing_problem,
            "hu_min": float(values.min()) if self.is_hu else None,
            "hu_max": float(values.max()) if self.is_hu else None,
            "grey_min": None if self.is_hu else float(values.min()),
            "grey_max": None if self.is_hu else float(values.max()),
            "compression": self.compression or None,
            "lossy": self.lossy,
            "file_window": list(self.file_window) if self.file_window else None,
        }


def load_slice(data: bytes, filename: str = "") -> CtSlice:
    """Read an uploaded file as one CT slice.

    Args:
        data: the file's bytes.
        filename: used only to pick a reader when the content is ambiguous.

    Raises:
        UnreadableImageError: not DICOM / PNG / JPEG, truncated, empty or absurd size.
        WrongModalityError: a readable DICOM that is not a CT image.
    """
    if not data:
        raise UnreadableImageError("The file is empty; upload a CT slice as DICOM, PNG or JPEG.")
    if data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8\xff"):
        return _read_raster(data)
    return _read_dicom(data, filename)


def _read_dicom(data: bytes, filename: str) -> CtSlice:
    """Parse DICOM bytes, check every header value the reader relies on, then decode the pixels.

    Any failure is a :class:`~core.errors.UserFacingError` with one sentence: the specific
    checks below name the header field; anything they did not foresee becomes a generic
    "damaged or unusual" sentence rather than a traceback.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            raise _not_an_image(filename) from exc
        if "PixelData" not in ds and "Modality" not in ds:
            raise _not_an_image(filename) from None
    except Exception as exc:
        raise UnreadableImageError(
            "The DICOM file is damaged or incomplete; export the slice again from the PACS."
        ) from exc
    try:
        return _dicom_slice(ds)
    except UserFacingError:
        raise
    except Exception as exc:  # last line of defence: never a traceback for a strange file
        raise UnreadableImageError(
            "This DICOM file is damaged or unusual in a way this tool cannot read; "
            "export the slice again from the PACS."
        ) from exc


def _dicom_slice(ds: pydicom.Dataset) -> CtSlice:
    """A parsed dataset as a :class:`CtSlice` in HU; the header is validated before any pixel is decoded."""
    _check_modality(ds)
    header = _check_header(ds)
    _check_size((header.rows, header.columns))
    _check_pixel_data_length(ds, header)
    hu = _hounsfield_units(ds, header)
    spacing, problem = _pixel_spacing(ds)
    return CtSlice(
        pixels=hu,
        is_hu=True,
        spacing_mm=spacing,
        source_kind="dicom",
        modality="CT",
        patient_id=_patient_id(ds),
        spacing_source="header" if spacing else None,
        spacing_problem=problem,
        file_window=file_window(ds),
        compression=compression_of(ds).name,
        lossy=lossy_reason(ds),
        source_ref=source_reference_of(ds),
    )


def _not_an_image(filename: str) -> UnreadableImageError:
    shown = f" ({filename.rsplit('.', 1)[-1].upper()})" if "." in filename else ""
    return UnreadableImageError(
        f"This file{shown} is not a DICOM, PNG or JPEG image; export the CT slice in one of those formats."
    )


def _patient_id(ds: pydicom.Dataset) -> str | None:
    """PatientID for pseudonymisation, or ``None`` when absent or unreadable (never a reason to refuse)."""
    try:
        return str(ds.get("PatientID", "")) or None
    except Exception:
        return None


# ---------------------------------------------------------------- DICOM header checks

# Greyscale photometric interpretations. MONOCHROME1 (low values shown white) is as good as
# MONOCHROME2 here: HU come from the modality LUT, whichever way round a viewer would paint them.
GREYSCALE_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
# Bits per stored pixel this reader decodes (a CT is 16; 8 and 32 occur in converted files).
BITS_ALLOCATED = (8, 16, 32)
_AGAIN = "export the slice again from the PACS"
_DS_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")  # DICOM Decimal String
_IS_TEXT = re.compile(r"[+-]?\d+")  # DICOM Integer String
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class _CtHeader:
    """The header values the reader uses, validated.

    Attributes:
        rows, columns: image size in pixels.
        bits_allocated: bits per stored pixel in the pixel data (8, 16 or 32).
        slope: RescaleSlope, HU per stored unit (finite, non-zero).
        intercept: RescaleIntercept, HU (finite).
    """

    rows: int
    columns: int
    bits_allocated: int
    slope: float
    intercept: float


class _HeaderProblem(Exception):
    """One header value is unusable; ``describe(keyword)`` is the start of the user's sentence."""

    def __init__(self, kind: Literal["absent", "empty", "bad"], shown: str = "", why: str = "") -> None:
        super().__init__(kind)
        self.kind, self.shown, self.why = kind, shown, why

    def describe(self, keyword: str) -> str:
        if self.kind == "absent":
            return f"This CT file has no {keyword}"
        if self.kind == "empty":
            return f"This CT file has an empty {keyword}"
        value = f" ({self.shown})" if self.shown else ""
        return f"This CT file's {keyword}{value} {self.why}"


def _header_error(keyword: str, problem: _HeaderProblem, consequence: str) -> UnreadableImageError:
    return UnreadableImageError(f"{problem.describe(keyword)}, so {consequence}; {_AGAIN}.")


def _element(ds: pydicom.Dataset, keyword: str) -> object | None:
    """The element as stored (pydicom's raw element when not yet converted), or ``None`` when absent.

    Reading the raw element avoids pydicom's own conversion, which raises (or warns) on
    malformed DS / IS values; the callers parse the bytes themselves.
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    return ds.get_item(tag)


def _text_parts(ds: pydicom.Dataset, keyword: str) -> list[str]:
    """A text element's (DS, IS, CS) values as stripped strings, at least one, none of them all blank.

    Raises:
        _HeaderProblem: absent, or empty.
    """
    elem = _element(ds, keyword)
    if elem is None:
        raise _HeaderProblem("absent")
    value = getattr(elem, "value", None)
    if isinstance(value, bytes | bytearray):
        parts = [part.strip(" \0") for part in bytes(value).decode("latin-1").split("\\")]
    elif value is None:
        parts = [""]
    elif isinstance(value, list | tuple | pydicom.multival.MultiValue):
        parts = [str(part).strip() for part in value]
    else:
        parts = [str(value).strip()]
    if not any(parts):
        raise _HeaderProblem("empty")
    return parts


def _decimal(ds: pydicom.Dataset, keyword: str) -> float:
    """One finite DS number (e.g. RescaleSlope), read from the raw text."""
    parts = _text_parts(ds, keyword)
    shown = _shown(parts)
    if len(parts) != 1:
        raise _HeaderProblem("bad", shown, "is not a single number")
    if not _DS_TEXT.fullmatch(parts[0]):
        raise _HeaderProblem("bad", shown, "is not a number")
    value = float(parts[0])
    if not math.isfinite(value):
        raise _HeaderProblem("bad", shown, "is not a finite number")
    return value


def _integer_string(ds: pydicom.Dataset, keyword: str) -> int:
    """One IS whole number (e.g. NumberOfFrames), read from the raw text."""
    parts = _text_parts(ds, keyword)
    shown = _shown(parts)
    if len(parts) != 1 or not _IS_TEXT.fullmatch(parts[0]):
        raise _HeaderProblem("bad", shown, "is not a whole number")
    return int(parts[0])


def _unsigned_short(ds: pydicom.Dataset, keyword: str) -> int:
    """One US value (e.g. Rows), from the raw two bytes in the file's byte order."""
    elem = _element(ds, keyword)
    if elem is None:
        raise _HeaderProblem("absent")
    value = getattr(elem, "value", None)
    if isinstance(value, bytes | bytearray):
        if len(value) == 0:
            raise _HeaderProblem("empty")
        if len(value) != 2:
            raise _HeaderProblem("bad", "", "is not a single whole number")
        return int.from_bytes(value, "little" if getattr(elem, "is_little_endian", True) else "big")
    if value is None or value == "":
        raise _HeaderProblem("empty")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _HeaderProblem("bad", _shown(value), "is not a single whole number")


def _read_field(
    reader: Callable[[pydicom.Dataset, str], _T], ds: pydicom.Dataset, keyword: str, consequence: str
) -> _T:
    """``reader(ds, keyword)``, its :class:`_HeaderProblem` turned into the user's sentence."""
    try:
        return reader(ds, keyword)
    except _HeaderProblem as problem:
        raise _header_error(keyword, problem, consequence) from None


def _check_modality(ds: pydicom.Dataset) -> None:
    """Refuse anything but a CT image that has pixel data."""
    try:
        modality = "\\".join(_text_parts(ds, "Modality")).upper()
    except _HeaderProblem as problem:
        modality, how = "", "tag missing" if problem.kind == "absent" else "tag empty"
    if modality == "SEG":
        raise WrongModalityError("This file is a DICOM segmentation, not an image; upload the CT slice itself.")
    if modality and modality != "CT":
        # "an" before a letter whose name starts with a vowel sound: an MR, an NM, a US, a PT.
        article = "an" if modality[0] in "AEFHILMNORSX" else "a"
        raise WrongModalityError(f"This file is {article} {_shown(modality)} image; a CT is needed.")
    if not modality:
        raise WrongModalityError(f"This DICOM file does not say it is a CT (Modality {how}); upload a CT slice.")
    if "PixelData" not in ds:
        raise UnreadableImageError("This DICOM file holds no image (no pixel data); upload a CT slice.")


def _check_header(ds: pydicom.Dataset) -> _CtHeader:
    """Validate, before decoding, every Image Pixel / CT Image header value the reader uses.

    Raises:
        WrongModalityError: a colour (not greyscale) image.
        UnreadableImageError: any of SamplesPerPixel, PhotometricInterpretation, NumberOfFrames,
            Rows, Columns, BitsAllocated, BitsStored, HighBit, PixelRepresentation, RescaleSlope,
            RescaleIntercept missing, empty, malformed or out of range; several frames.
    """
    greyscale = "it is not known to be a greyscale image"
    samples = _read_field(_unsigned_short, ds, "SamplesPerPixel", greyscale)
    if samples in (3, 4):
        raise WrongModalityError(
            f"This DICOM is a colour image ({samples} SamplesPerPixel); a greyscale CT slice is needed."
        )
    if samples != 1:
        raise _header_error("SamplesPerPixel", _HeaderProblem("bad", str(samples), "is not 1"), greyscale)
    photometric = "\\".join(_read_field(_text_parts, ds, "PhotometricInterpretation", greyscale)).upper()
    if photometric not in GREYSCALE_PHOTOMETRIC:
        raise WrongModalityError(
            f"This DICOM's PhotometricInterpretation is {_shown(photometric)}, not the greyscale MONOCHROME1 "
            "or MONOCHROME2 of a CT slice; upload a greyscale CT slice."
        )
    if _element(ds, "NumberOfFrames") is not None:  # absent means one frame
        frames = _read_field(_integer_string, ds, "NumberOfFrames", "the number of images it holds is unknown")
        if frames < 1:
            problem = _HeaderProblem("bad", str(frames), "is not a positive whole number")
            raise _header_error("NumberOfFrames", problem, "the number of images it holds is unknown")
        if frames > 1:
            raise UnreadableImageError(
                "This DICOM file holds several frames; upload the single axial slice with the largest tumour area."
            )

    size = "the size of its image is unknown"
    rows = _read_field(_unsigned_short, ds, "Rows", size)
    columns = _read_field(_unsigned_short, ds, "Columns", size)
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if value == 0:
            raise _header_error(keyword, _HeaderProblem("bad", "0", "is zero"), size)

    decode = "its stored pixel values cannot be decoded reliably"
    allocated = _read_field(_unsigned_short, ds, "BitsAllocated", decode)
    if allocated not in BITS_ALLOCATED:
        raise _header_error("BitsAllocated", _HeaderProblem("bad", str(allocated), "is not 8, 16 or 32 bits"), decode)
    stored = _read_field(_unsigned_short, ds, "BitsStored", decode)
    if not 1 <= stored <= allocated:
        why = f"is not between 1 and its BitsAllocated of {allocated}"
        raise _header_error("BitsStored", _HeaderProblem("bad", str(stored), why), decode)
    high = _read_field(_unsigned_short, ds, "HighBit", decode)
    if high != stored - 1:
        why = f"is not one less than its BitsStored of {stored}"
        raise _header_error("HighBit", _HeaderProblem("bad", str(high), why), decode)
    representation = _read_field(_unsigned_short, ds, "PixelRepresentation", decode)
    if representation not in (0, 1):
        why = "is neither 0 (unsigned) nor 1 (signed)"
        raise _header_error("PixelRepresentation", _HeaderProblem("bad", str(representation), why), decode)

    # CT Image module, type 1: without them (or with a zero slope) the HU would be wrong, not just unknown.
    hu = "its Hounsfield units are unknown"
    slope = _read_field(_decimal, ds, "RescaleSlope", hu)
    if slope == 0:
        raise _header_error("RescaleSlope", _HeaderProblem("bad", f"{slope:g}", "is zero"), hu)
    intercept = _read_field(_decimal, ds, "RescaleIntercept", hu)
    return _CtHeader(rows=rows, columns=columns, bits_allocated=allocated, slope=slope, intercept=intercept)


def _check_pixel_data_length(ds: pydicom.Dataset, header: _CtHeader) -> None:
    """Refuse native (uncompressed) pixel data that is not Rows × Columns × BitsAllocated / 8 bytes (+1 padding).

    Encapsulated (compressed) pixel data is left to the decoder, whose failure has its own sentence.
    """
    elem = _element(ds, "PixelData")
    value = getattr(elem, "value", None)
    if value is None:
        value = b""
    if not isinstance(value, bytes | bytearray):
        return
    if getattr(elem, "length", 0) == _UNDEFINED_LENGTH or getattr(elem, "is_undefined_length", False):
        return
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if syntax is not None and UID(str(syntax)).is_encapsulated:
            return
    except ValueError:  # not a known transfer syntax: treat as native, as pydicom would
        pass
    needed = header.rows * header.columns * header.bits_allocated // 8
    if len(value) < needed:
        raise UnreadableImageError(
            f"This CT file's pixel data is incomplete ({len(value)} of the {needed} bytes its Rows, Columns and "
            f"BitsAllocated call for), so the file was cut short or damaged; {_AGAIN}."
        )
    # more than one padding byte beyond the image: Rows/Columns disagree with the data, and
    # decoding would silently shift every row
    if len(value) > needed + 1:
        raise UnreadableImageError(
            f"This CT file's pixel data is longer than its Rows, Columns and BitsAllocated say ({len(value)} "
            f"bytes, not {needed}), so its image size is wrong; {_AGAIN}."
        )


def _hounsfield_units(ds: pydicom.Dataset, header: _CtHeader) -> np.ndarray:
    """Decode the pixels and apply the modality LUT: HU = stored · RescaleSlope + RescaleIntercept.

    Args:
        ds: the dataset, header already validated by :func:`_check_header`.
        header: the validated values (slope in HU per stored unit, intercept in HU).

    Returns:
        (rows, cols) float32 HU. Stored values are integers (uint or int, 8–32 bits, by
        PixelRepresentation) and are computed in float64 before the cast.

    Raises:
        UnreadableImageError: pixel data that cannot be decoded, of another shape than the header
            says, or HU that overflow float32.
    """
    compression = compression_of(ds)
    if not compression.decodable:
        raise UnreadableImageError(undecodable_message(compression))
    try:
        stored = ds.pixel_array
    except BaseException as exc:
        if not decode_failed(exc):
            raise
        if UID(compression.uid).is_encapsulated:
            raise UnreadableImageError(
                f"The CT pixel data, compressed with {compression.name}, cannot be decoded (damaged or "
                "truncated); export the slice again from the PACS, uncompressed if possible."
            ) from exc
        raise UnreadableImageError(
            "The CT pixel data cannot be decoded (damaged, truncated or an unsupported compression); "
            "export the slice uncompressed."
        ) from exc
    if stored.shape != (header.rows, header.columns):
        raise UnreadableImageError("The CT pixel data is not a single 2-D slice; upload one axial slice.")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        hu = (stored.astype(np.float64) * header.slope + header.intercept).astype(np.float32)
    if not np.isfinite(hu).all():
        raise UnreadableImageError(
            f"This CT file's RescaleSlope ({header.slope:g}) and RescaleIntercept ({header.intercept:g}) give values "
            f"far beyond any Hounsfield unit, so its Hounsfield units are unknown; {_AGAIN}."
        )
    return hu


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, col) spacing in mm from PixelSpacing, or ``None`` and why it is unusable."""
    try:
        spacing = ds.get("PixelSpacing")
    except Exception:  # a value pydicom cannot even parse
        return None, "its PixelSpacing cannot be read"
    if spacing is None or spacing == "":
        return None, "it has no PixelSpacing"
    values = list(spacing) if isinstance(spacing, list | tuple | pydicom.multival.MultiValue) else [spacing]
    try:
        if len(values) != 2:
            raise ValueError("PixelSpacing holds (row, column)")
        row_mm, col_mm = float(values[0]), float(values[1])
    except (TypeError, ValueError, IndexError):
        return None, f"its PixelSpacing ({_shown(spacing)}) is not two numbers"
    if not (math.isfinite(row_mm) and math.isfinite(col_mm)) or min(row_mm, col_mm) <= 0:
        return None, f"its PixelSpacing ({_shown(spacing)}) is not positive"
    if not (MIN_SPACING_MM <= row_mm <= MAX_SPACING_MM and MIN_SPACING_MM <= col_mm <= MAX_SPACING_MM):
        return None, f"its PixelSpacing ({_shown(spacing)}) is outside {MIN_SPACING_MM:g}–{MAX_SPACING_MM:g} mm"
    return (row_mm, col_mm), None


def _shown(value: object, limit: int = 40) -> str:
    """A header value as the user would recognise it, on one line (control characters as "?"), cut short."""
    text = (
        "\\".join(str(v) for v in value)
        if isinstance(value, list | tuple | pydicom.multival.MultiValue)
        else str(value)
    )
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_raster(data: bytes) -> CtSlice:
    damaged = UnreadableImageError("The PNG/JPEG file is damaged or incomplete; export the slice again.")
    declared = raster_size(data)
    if declared is None:
        raise damaged
    _check_size(declared)  # before decoding: OpenCV allocates the declared size first
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise damaged
    _check_size(image.shape)
    kind: SourceKind = "png" if data.startswith(b"\x89PNG") else "jpeg"
    return CtSlice(pixels=image.astype(np.float32), is_hu=False, spacing_mm=None, source_kind=kind)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0–SOF15 but DHT C4, JPG C8 and DAC CC), which carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers RST0–RST7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def raster_size(data: bytes) -> tuple[int, int] | None:
    """(rows, cols) a PNG or JPEG says it holds, from its header alone; ``None`` when there is none.

    OpenCV allocates the image its header declares before it reads a pixel (up to 2**30
    pixels, gigabytes from a file of a few bytes), so a caller checks this size first. The
    size is found where libpng and libjpeg take it: a PNG's IHDR chunk, which must come
    first, and a JPEG's first start-of-frame marker before its scan, markers found the way
    libjpeg's ``next_marker`` finds them (bytes up to a 0xFF skipped, 0xFF fill bytes and
    stuffed 0xFF00 passed over). A PNG whose chunks claim more bytes than the file holds is
    ``None`` too: OpenCV 5 allocates a chunk's declared length (up to 2 GiB) before reading it.
    """
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
            return None
        pos = 8
        while pos + 12 <= len(data):  # length, type, body, CRC
            length = int.from_bytes(data[pos : pos + 4], "big")
            if pos + 12 + length > len(data):
                return None
            if data[pos + 4 : pos + 8] == b"IEND":
                break
            pos += 12 + length
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return height, width
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while True:
        start = data.find(b"\xff", pos)
        if start < 0:
            return None
        pos = start + 1
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            return None
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, the end, or the scan before any frame size
            return None
        if pos + 2 > len(data):
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 7 > len(data):
                return None
            return int.from_bytes(data[pos + 3 : pos + 5], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")
        if length < 2:
            return None
        pos += length


def _check_size(shape: tuple[int, ...]) -> None:
    rows, cols = shape[:2]
    if min(rows, cols) < MIN_SIDE_PX:
        raise UnreadableImageError(f"The image is only {cols}×{rows} pixels; upload a full CT slice.")
    if max(rows, cols) > MAX_SIDE_PX:
        raise UnreadableImageError(
            f"The image is {cols}×{rows} pixels, larger than {MAX_SIDE_PX} px a side; upload one CT slice."
        )


def file_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(level, width) in HU from WindowCenter / WindowWidth, first value of each; ``None`` if unusable.

    The values are in the units after the modality LUT, i.e. HU for a CT (PS3.3 C.11.2.1.2).
    A width below 1 HU or a value beyond any plausible HU is ignored, never a reason to refuse.
    """
    try:
        level_text = _text_parts(ds, "WindowCenter")[0]
        width_text = _text_parts(ds, "WindowWidth")[0]
    except _HeaderProblem:
        return None
    if not (_DS_TEXT.fullmatch(level_text) and _DS_TEXT.fullmatch(width_text)):
        return None
    level, width = float(level_text), float(width_text)
    if not (math.isfinite(level) and math.isfinite(width) and 1.0 <= width <= 10000.0 and abs(level) <= 10000.0):
        return None
    return level, width


def window_presets(ct: CtSlice) -> dict[str, tuple[float, float]]:
    """Display presets for this slice: :data:`WINDOW_PRESETS` plus the file's own window, if any.

    The file's window comes last, labelled "From the file (L… / W…)". Display only: the
    model's input window always comes from the checkpoint's preprocessing.
    """
    presets = dict(WINDOW_PRESETS)
    if ct.file_window is not None:
        level, width = ct.file_window
        presets[f"From the file (L{level:g} / W{width:g})"] = (level, width)
    return presets


def lossy_note(ct: CtSlice) -> str | None:
    """A caution when the slice's HU are approximate because of lossy compression; ``None`` otherwise.

    Decision: lossy CT (JPEG Baseline 8-bit, JPEG Extended 12-bit, lossy JPEG 2000 / JPEG-LS) is
    read and may be outlined and analysed, because a surgeon's PACS may hold nothing better, but
    the page must say so: the model was trained on lossless plain CT, and lossy coding blurs the
    fine texture its patches look at (an 8-bit baseline JPEG also keeps only 256 grey steps).
    """
    if ct.lossy is None:
        return None
    return (
        f"This slice was stored with {ct.lossy}: its Hounsfield units are approximate, so the model's estimate "
        "may differ from one on the original scan; use a lossless or uncompressed export when you can."
    )


def window_to_unit(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] with a linear window; (rows, cols) float32."""
    low = level - width / 2.0
    return np.clip((hu.astype(np.float32) - low) / float(width), 0.0, 1.0)


def display_image(ct: CtSlice, level: float, width: float) -> np.ndarray:
    """Grey (rows, cols) uint8 for the screen; raster exports are shown as they are."""
    if not ct.is_hu:
        return np.clip(ct.pixels, 0, 255).astype(np.uint8)
    return np.round(window_to_unit(ct.pixels, level, width) * 255.0).astype(np.uint8)


def model_grey(ct: CtSlice, cfg: PreprocessConfig) -> np.ndarray:
    """Grey [0, 1] float32 (rows, cols) in the model's own window (not the display window)."""
    if not ct.is_hu:
        return np.clip(ct.pixels, 0, 255).astype(np.float32) / 255.0
    return window_to_unit(ct.pixels, cfg.window_level_hu, cfg.window_width_hu)


# ---------------------------------------------------------------- calibration for the model


def calibrate(
    ct: CtSlice, spacing_mm: float | None = None, export_window: tuple[float, float] | None = None
) -> CtSlice:
    """Apply what the user stated about an image the header cannot tell: its scale and its window.

    Args:
        ct: the slice as read.
        spacing_mm: isotropic pixel size in mm/px for an image without usable spacing (a
            PNG/JPEG export, or a DICOM without PixelSpacing); ignored when the DICOM header
            has a usable one (the header wins).
        export_window: (level, width) in HU a PNG/JPEG export was made with. Grey g (0–255)
            maps back to HU as ``level − width/2 + g/255 · width``; grey 0 and 255 mean
            "at or beyond the window's edge" (the export clipped them). Ignored for DICOM.

    Returns:
        A new slice; unchanged when nothing applies.

    Raises:
        UnreadableImageError: a spacing or window outside plausible values.
    """
    if spacing_mm is not None and ct.spacing_source != "header":
        if not (math.isfinite(spacing_mm) and MIN_SPACING_MM <= spacing_mm <= MAX_SPACING_MM):
            raise UnreadableImageError(
                f"A pixel spacing of {spacing_mm:g} mm/px is not plausible for a CT slice; "
                f"enter a value between {MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm/px."
            )
        ct = replace(ct, spacing_mm=(float(spacing_mm), float(spacing_mm)), spacing_source="user")
    if export_window is not None and not ct.is_hu:
        level, width = (float(v) for v in export_window)
        if not (math.isfinite(level) and math.isfinite(width) and 1.0 <= width <= 5000.0 and -2000 <= level <= 4000):
            raise UnreadableImageError(
                f"An export window of L{level:g}/W{width:g} HU is not plausible; enter the level and width "
                "(in HU) the viewer used for the export, e.g. L60/W160."
            )
        hu = (level - width / 2.0) + np.clip(ct.pixels, 0.0, 255.0) / 255.0 * width
        ct = replace(ct, pixels=hu.astype(np.float32), is_hu=True, export_window=(level, width))
    return ct


def analysis_blocker(ct: CtSlice, cfg: PreprocessConfig) -> str | None:
    """Why the model must not run on this slice (one sentence), or ``None`` when it may.

    The model's patches are defined in millimetres (``cfg.target_spacing_mm``) and its input
    is a window in HU: an image without a known scale or without HU would be analysed at a
    scale, or in grey values, the model never saw.
    """
    needs_spacing = cfg.target_spacing_mm is not None and ct.spacing_mm is None
    if ct.is_raster and not ct.is_hu and needs_spacing:
        return (
            f"The model cannot run on this {ct.source_kind.upper()} export yet: enter its pixel spacing (mm/px) "
            "and the window (level/width, HU) it was exported with, because the model's patches are defined "
            "in millimetres and its input in Hounsfield units."
        )
    if not ct.is_hu:
        return (
            f"The model cannot run on this {ct.source_kind.upper()} export yet: enter the window (level/width, HU) "
            "it was exported with, so that its grey values can be mapped back to Hounsfield units."
        )
    if needs_spacing:
        what = (
            f"This DICOM slice has no usable pixel spacing ({ct.spacing_problem or 'unknown why'})"
            if not ct.is_raster
            else f"This {ct.source_kind.upper()} export has no pixel spacing"
        )
        return (
            f"{what}: enter it in mm/px to run the model, whose {cfg.patch_mm:g} mm patches would otherwise "
            "cover the wrong amount of tissue."
        )
    return None


def export_window_note(ct: CtSlice, cfg: PreprocessConfig) -> str | None:
    """A caution when a PNG/JPEG export's window does not cover the model's window (values were clipped)."""
    if ct.export_window is None:
        return None
    level, width = ct.export_window
    low, high = level - width / 2.0, level + width / 2.0
    m_low = cfg.window_level_hu - cfg.window_width_hu / 2.0
    m_high = cfg.window_level_hu + cfg.window_width_hu / 2.0
    step = width / 255.0
    note = f"Grey values mapped back to HU with the export window L{level:g}/W{width:g} ({step:.2g} HU per grey step)."
    if low > m_low or high < m_high:
        note += (
            f" The export covers {low:g} to {high:g} HU, narrower than the model's {m_low:g} to {m_high:g} HU: "
            "tissue outside it was clipped by the export, and the model sees it at the clip value."
        )
    return note
