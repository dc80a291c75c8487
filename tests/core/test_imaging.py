from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from core.errors import UnreadableImageError, WrongModalityError
from core.imaging import display_image, load_slice, model_grey, window_to_unit
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
