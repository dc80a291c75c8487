from __future__ import annotations

import io
import math
import struct

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword

from core.errors import UnreadableImageError, UserFacingError, WrongModalityError
from core.imaging import (
    CtSlice,
    analysis_blocker,
    calibrate,
    display_image,
    load_slice,
    model_grey,
    window_to_unit,
)
from core.phantom import sample_case
from core.preprocess import PreprocessConfig


def _bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


def test_ct_dicom_gives_hounsfield_units_and_spacing() -> None:
    ct = load_slice(_bytes("CT_small.dcm"), "CT_small.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert ct.is_hu and ct.source_kind == "dicom"
    np.testing.assert_allclose(ct.pixels, expected)
    assert ct.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert ct.shape == (128, 128)


def test_phantom_hu_survive_the_dicom_round_trip() -> None:
    ct = load_slice(sample_case().dicom_bytes)
    # liver ~60 HU and air -1000 HU are both present after RescaleIntercept -1024
    assert ct.pixels.min() <= -990 and 20 < float(np.median(ct.pixels[ct.pixels > -50])) < 90


@pytest.mark.parametrize(
    ("name", "error", "phrase"),
    [
        ("MR_small.dcm", WrongModalityError, "MR image; a CT is needed"),
        ("liver_1frame.dcm", WrongModalityError, "segmentation"),
        ("MR_truncated.dcm", (UnreadableImageError, WrongModalityError), ""),
    ],
)
def test_bad_dicom_inputs_give_one_plain_sentence(name: str, error: type, phrase: str) -> None:
    with pytest.raises(error) as caught:
        load_slice(_bytes(name), name)
    message = str(caught.value)
    assert phrase in message and "\n" not in message and message.endswith(".")


def test_truncated_ct_is_refused_plainly() -> None:
    data = _bytes("CT_small.dcm")
    with pytest.raises(UnreadableImageError, match=r"damaged|incomplete|truncated"):
        load_slice(data[: len(data) // 2], "cut.dcm")


@pytest.mark.parametrize("data", [b"", b"%PDF-1.7 not an image" * 10, b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(UnreadableImageError):
        load_slice(data, "upload.pdf")


def test_png_export_has_no_hu_and_no_spacing() -> None:
    grey = (np.arange(256 * 256) % 256).reshape(256, 256).astype(np.uint8)
    _ok, encoded = cv2.imencode(".png", grey)
    ct = load_slice(encoded.tobytes(), "slice.png")
    assert not ct.is_hu and ct.spacing_mm is None and ct.source_kind == "png"
    np.testing.assert_array_equal(display_image(ct, 40, 400), grey)
    np.testing.assert_allclose(model_grey(ct, PreprocessConfig()), grey / 255.0, atol=1e-6)


def test_tiny_image_is_refused() -> None:
    _ok, encoded = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UnreadableImageError, match="only 8×8"):
        load_slice(encoded.tobytes(), "tiny.png")


def test_window_maps_level_to_half_grey() -> None:
    hu = np.array([[-1000.0, 40.0, 240.0, 3000.0]])
    np.testing.assert_allclose(window_to_unit(hu, 40.0, 400.0), [[0.0, 0.5, 1.0, 1.0]])


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.3, 0.6, 0.9, 0.999])
def test_any_truncation_of_a_ct_gives_a_plain_error_or_a_slice(fraction: float) -> None:
    from core.errors import UserFacingError

    data = _bytes("CT_small.dcm")
    try:
        ct = load_slice(data[: max(1, int(len(data) * fraction))], "cut.dcm")
    except UserFacingError as error:
        assert "\n" not in str(error)
    else:  # only possible if the cut fell after the pixel data
        assert ct.shape == (128, 128)


def test_random_bytes_never_raise_anything_but_a_plain_error() -> None:
    from core.errors import UserFacingError

    rng = np.random.default_rng(0)
    for size in (1, 7, 128, 132, 1000, 5000):
        for prefix in (b"", b"\0" * 128 + b"DICM", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"):
            with pytest.raises(UserFacingError):
                load_slice(prefix + rng.integers(0, 256, size, dtype=np.uint8).tobytes(), "x.dcm")


# ---------------------------------------------------------------- malformed CT headers

# VRs whose explicit-VR encoding has two reserved bytes and a 4-byte length.
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def _encode(keyword: str, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian data element, as it lies in the file."""
    tag = tag_for_keyword(keyword)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def ct_with(keyword: str, vr: str | None = None, value: bytes | None = None) -> bytes:
    """The bytes of pydicom's real ``CT_small.dcm`` with one element replaced, added or removed.

    The element's encoded bytes are edited directly, so values pydicom refuses to set (a DS
    "abc", a US of one byte) reach the reader as a real malformed file would.

    Args:
        keyword: DICOM keyword, e.g. "RescaleIntercept".
        vr: its VR in the file ("DS", "US", "OW"...); ignored when removing.
        value: the raw value bytes (DICOM pads text to even length with a space), or ``None`` to remove.
    """
    data = _bytes("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))  # explicit VR little endian, elements left raw
    tag = tag_for_keyword(keyword)
    new = b"" if value is None else _encode(keyword, vr or "UN", value)

    def span(element_tag: int) -> tuple[int, int]:
        raw = ds.get_item(element_tag)
        start = raw.value_tell - (12 if raw.VR in _LONG_VRS else 8)
        return start, raw.value_tell + raw.length

    if tag in ds:
        start, end = span(tag)
        return data[:start] + new + data[end:]
    tags = list(ds.keys())  # tags only: iterating the dataset itself would convert every element
    following = min(t for t in tags if t > tag)
    start, _ = span(following)
    return data[:start] + new + data[start:]


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


# (case, keyword, vr, raw value or None to remove, exception type); the sentence must name the keyword
HEADER_CASES = [
    ("rows missing", "Rows", None, None, UnreadableImageError),
    ("rows empty", "Rows", "US", b"", UnreadableImageError),
    ("rows zero", "Rows", "US", _us(0), UnreadableImageError),
    ("columns missing", "Columns", None, None, UnreadableImageError),
    ("columns two values", "Columns", "US", _us(128) + _us(128), UnreadableImageError),
    ("bits allocated missing", "BitsAllocated", None, None, UnreadableImageError),
    ("bits allocated 12", "BitsAllocated", "US", _us(12), UnreadableImageError),
    ("bits allocated one byte", "BitsAllocated", "US", b"\x10", UnreadableImageError),
    ("bits stored missing", "BitsStored", None, None, UnreadableImageError),
    ("bits stored above allocated", "BitsStored", "US", _us(20), UnreadableImageError),
    ("bits stored zero", "BitsStored", "US", _us(0), UnreadableImageError),
    ("high bit missing", "HighBit", None, None, UnreadableImageError),
    ("high bit not stored - 1", "HighBit", "US", _us(11), UnreadableImageError),
    ("pixel representation missing", "PixelRepresentation", None, None, UnreadableImageError),
    ("pixel representation 2", "PixelRepresentation", "US", _us(2), UnreadableImageError),
    ("samples per pixel missing", "SamplesPerPixel", None, None, UnreadableImageError),
    ("samples per pixel zero", "SamplesPerPixel", "US", _us(0), UnreadableImageError),
    ("samples per pixel colour", "SamplesPerPixel", "US", _us(3), WrongModalityError),
    ("photometric missing", "PhotometricInterpretation", None, None, UnreadableImageError),
    ("photometric empty", "PhotometricInterpretation", "CS", b"", UnreadableImageError),
    ("photometric RGB", "PhotometricInterpretation", "CS", b"RGB ", WrongModalityError),
    ("photometric YBR", "PhotometricInterpretation", "CS", b"YBR_FULL", WrongModalityError),
    ("frames not a number", "NumberOfFrames", "IS", b"x1", UnreadableImageError),
    ("frames zero", "NumberOfFrames", "IS", b"0 ", UnreadableImageError),
    ("frames empty", "NumberOfFrames", "IS", b"", UnreadableImageError),
    ("slope missing", "RescaleSlope", None, None, UnreadableImageError),
    ("slope empty", "RescaleSlope", "DS", b"", UnreadableImageError),
    ("slope not a number", "RescaleSlope", "DS", b"abc ", UnreadableImageError),
    ("slope zero", "RescaleSlope", "DS", b"0 ", UnreadableImageError),
    ("slope nan", "RescaleSlope", "DS", b"nan ", UnreadableImageError),
    ("slope infinite", "RescaleSlope", "DS", b"1e999 ", UnreadableImageError),
    ("slope two values", "RescaleSlope", "DS", b"1\\2 ", UnreadableImageError),
    ("intercept missing", "RescaleIntercept", None, None, UnreadableImageError),
    ("intercept empty", "RescaleIntercept", "DS", b"", UnreadableImageError),
    ("intercept not a number", "RescaleIntercept", "DS", b"abc ", UnreadableImageError),
    ("intercept with a newline", "RescaleIntercept", "DS", b"-10\n24", UnreadableImageError),
    ("pixel data half", "PixelData", "OW", b"\0" * (128 * 128), UnreadableImageError),
    ("pixel data empty", "PixelData", "OW", b"", UnreadableImageError),
    # Columns one short of the data: decoding would shift every row, so the size is refused
    ("columns disagree with data", "Columns", "US", _us(127), UnreadableImageError),
]


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "error"), [case[1:] for case in HEADER_CASES], ids=[case[0] for case in HEADER_CASES]
)
def test_malformed_ct_header_gives_one_sentence_naming_the_field(
    keyword: str, vr: str | None, value: bytes | None, error: type[UserFacingError]
) -> None:
    names = {"PixelData": "pixel data is incomplete"}.get(keyword, keyword)
    if value == _us(127):
        names = "pixel data is longer than its Rows, Columns"
    data = ct_with(keyword, vr, value)
    try:
        load_slice(data, "slice.dcm")
    except UserFacingError as caught:
        message = str(caught)
        assert type(caught) is error, message
    else:
        pytest.fail(f"{keyword} case was accepted")  # any non-UserFacingError escapes and fails the test too
    assert names in message
    assert "\n" not in message and message.endswith(".") and message[0].isupper()
    assert message.count(". ") == 0, message  # one sentence
    for jargon in ("Traceback", "Error", "Exception", "None", "dtype", "0x"):
        assert jargon not in message


def test_missing_intercept_is_not_taken_as_zero() -> None:
    """The bug the header checks close: pydicom's modality LUT treats a missing intercept as 0 (HU off by 1024)."""
    with pytest.raises(UnreadableImageError, match="has no RescaleIntercept, so its Hounsfield units are unknown"):
        load_slice(ct_with("RescaleIntercept"), "slice.dcm")


def test_monochrome1_ct_is_read_with_the_same_hounsfield_units() -> None:
    plain = load_slice(_bytes("CT_small.dcm"))
    inverted = load_slice(ct_with("PhotometricInterpretation", "CS", b"MONOCHROME1 "))
    np.testing.assert_array_equal(inverted.pixels, plain.pixels)
    assert inverted.pixels.dtype == np.float32


def test_editing_helper_round_trips_an_unchanged_value() -> None:
    """The helper itself: re-encoding the original intercept gives the original slice."""
    same = load_slice(ct_with("RescaleIntercept", "DS", b"-1024 "))
    np.testing.assert_array_equal(same.pixels, load_slice(_bytes("CT_small.dcm")).pixels)


def test_unexpected_failure_while_reading_becomes_a_plain_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.imaging

    def explode(*_args: object) -> None:
        raise KeyError("something pydicom never documented")

    monkeypatch.setattr(core.imaging, "_pixel_spacing", explode)
    with pytest.raises(UnreadableImageError, match=r"^This DICOM file is damaged or unusual.*PACS\.$"):
        load_slice(_bytes("CT_small.dcm"), "slice.dcm")


# ---------------------------------------------------------------- DICOM without usable spacing

SPACING_CASES = [
    ("missing", None, "it has no PixelSpacing"),
    ("empty", b"", "it has no PixelSpacing"),
    ("zero", b"0\\0 ", "its PixelSpacing (0\\0) is not positive"),
    ("negative", b"-0.7\\-0.7 ", "its PixelSpacing (-0.7\\-0.7) is not positive"),
    ("not a number", b"abc\\1 ", "its PixelSpacing (abc\\1) is not two numbers"),
    ("one value", b"0.7 ", "its PixelSpacing (0.7) is not two numbers"),
    ("three values", b"0.7\\0.7\\0.7 ", "its PixelSpacing (0.7\\0.7\\0.7) is not two numbers"),
]


@pytest.mark.parametrize(("value", "problem"), [c[1:] for c in SPACING_CASES], ids=[c[0] for c in SPACING_CASES])
def test_dicom_without_usable_spacing_says_why_and_is_no_export(value: bytes | None, problem: str) -> None:
    ct = load_slice(ct_with("PixelSpacing", "DS", value), "slice.dcm")
    assert ct.spacing_mm is None and ct.spacing_source is None and ct.pixel_area_mm2 is None
    assert ct.spacing_problem == problem
    assert ct.is_hu and not ct.is_raster and ct.summary()["pixel_spacing_problem"] == problem
    blocker = analysis_blocker(ct, PreprocessConfig())
    assert blocker is not None and blocker.startswith("This DICOM slice has no usable pixel spacing")
    assert problem in blocker and "export" not in blocker.lower()
    assert "\n" not in blocker and blocker.endswith(".")


# ---------------------------------------------------------------- calibrate / analysis_blocker


def _png_slice(columns: tuple[int, ...] = (0, 128, 255), side: int = 64) -> CtSlice:
    """A PNG export whose grey values are ``columns``, each in a vertical band."""
    grey = np.repeat(np.array(columns, np.uint8), math.ceil(side / len(columns)))[:side]
    _ok, encoded = cv2.imencode(".png", np.tile(grey, (side, 1)))
    return load_slice(encoded.tobytes(), "export.png")


def test_export_window_maps_grey_back_to_hounsfield_units() -> None:
    ct = calibrate(_png_slice(), export_window=(60.0, 160.0))
    assert ct.is_hu and ct.export_window == (60.0, 160.0) and ct.pixels.dtype == np.float32
    # level − width/2 + g/255 · width: 0 → −20, 128 → −20 + 128/255·160 ≈ 60.31, 255 → 140 HU
    assert float(ct.pixels[0, 0]) == pytest.approx(-20.0)
    assert float(ct.pixels[0, 30]) == pytest.approx(-20.0 + 128.0 / 255.0 * 160.0, abs=1e-4)
    assert float(ct.pixels[0, -1]) == pytest.approx(140.0)
    assert ct.spacing_mm is None and ct.source_kind == "png"


def test_entered_spacing_is_used_only_where_the_header_has_none() -> None:
    header = load_slice(_bytes("CT_small.dcm"))
    kept = calibrate(header, spacing_mm=0.5, export_window=(60.0, 160.0))
    assert kept.spacing_mm == header.spacing_mm and kept.spacing_source == "header"
    np.testing.assert_array_equal(kept.pixels, header.pixels)  # a DICOM's HU are never re-windowed
    assert kept.export_window is None

    missing = load_slice(ct_with("PixelSpacing"))
    entered = calibrate(missing, spacing_mm=0.7)
    assert entered.spacing_mm == (0.7, 0.7) and entered.spacing_source == "user"
    assert entered.pixel_area_mm2 == pytest.approx(0.49)
    assert analysis_blocker(entered, PreprocessConfig()) is None


@pytest.mark.parametrize("spacing", [0.0, -0.7, 0.001, 11.0, math.nan, math.inf])
def test_implausible_spacing_is_refused(spacing: float) -> None:
    with pytest.raises(UnreadableImageError, match="pixel spacing") as caught:
        calibrate(_png_slice(), spacing_mm=spacing)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".")


@pytest.mark.parametrize("window", [(60.0, 0.0), (60.0, -160.0), (60.0, 6000.0), (5000.0, 160.0), (math.nan, 160.0)])
def test_implausible_export_window_is_refused(window: tuple[float, float]) -> None:
    with pytest.raises(UnreadableImageError, match="export window") as caught:
        calibrate(_png_slice(), export_window=window)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".")


@pytest.mark.parametrize(
    ("spacing", "window", "needs"),
    [
        (None, None, ("pixel spacing", "window")),
        (None, (60.0, 160.0), ("pixel spacing",)),
        (0.7, None, ("window",)),
        (0.7, (60.0, 160.0), ()),
    ],
    ids=["nothing", "window only", "spacing only", "both"],
)
def test_png_export_runs_only_once_spacing_and_window_are_stated(
    spacing: float | None, window: tuple[float, float] | None, needs: tuple[str, ...]
) -> None:
    blocker = analysis_blocker(calibrate(_png_slice(), spacing, window), PreprocessConfig())
    if not needs:
        assert blocker is None
        return
    assert blocker is not None and "PNG export" in blocker and "\n" not in blocker and blocker.endswith(".")
    for what in needs:
        assert what in blocker
    if needs == ("window",):
        assert "pixel spacing" not in blocker
    if needs == ("pixel spacing",):
        assert "window" not in blocker


def test_a_good_dicom_needs_nothing_entered() -> None:
    assert analysis_blocker(load_slice(_bytes("CT_small.dcm")), PreprocessConfig()) is None


# ---------------------------------------------------------------- the file's own window, compression


def test_the_files_window_becomes_an_extra_preset() -> None:
    from core.imaging import WINDOW_PRESETS, window_presets

    ct = load_slice(sample_case().dicom_bytes)  # the phantom writes WindowCenter 60 / WindowWidth 160
    assert ct.file_window == (60.0, 160.0)
    presets = window_presets(ct)
    assert list(presets)[: len(WINDOW_PRESETS)] == list(WINDOW_PRESETS)
    assert presets["From the file (L60 / W160)"] == (60.0, 160.0)
    plain = load_slice(_bytes("CT_small.dcm"))  # no window in its header
    assert plain.file_window is None and window_presets(plain) == WINDOW_PRESETS


@pytest.mark.parametrize(
    ("centre", "width", "expected"),
    [
        (b"40\\300", b"400\\1500", (40.0, 400.0)),
        (b"-600 ", b"1500", (-600.0, 1500.0)),
        (b"40", b"0 ", None),
        (b"abc ", b"400 ", None),
        (b"", b"400 ", None),
    ],
    ids=["multi-valued: first", "lung", "zero width", "not a number", "empty"],
)
def test_file_window_parsing_never_refuses(centre: bytes, width: bytes, expected: tuple[float, float] | None) -> None:
    data = ct_with("WindowCenter", "DS", centre)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds["WindowWidth"] = pydicom.DataElement(tag_for_keyword("WindowWidth"), "DS", width)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    ct = load_slice(buffer.getvalue())
    assert ct.file_window == expected


def test_summary_names_the_compression() -> None:
    facts = load_slice(_bytes("CT_small.dcm")).summary()
    assert facts["compression"] == "uncompressed (explicit VR little endian)" and facts["lossy"] is None
    assert facts["file_window"] is None
