"""One real decode per transfer syntax a PACS exports (core.dicom_codecs via core.imaging.load_slice).

Every file is pydicom's real CT_small.dcm encoded here (tests/core/codec_files.py); lossless
syntaxes must give exactly the HU of the uncompressed original, lossy ones stay within a
bound and say they are lossy.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder

from core.dicom_codecs import compression_of, register_decoders
from core.errors import UnreadableImageError
from core.imaging import load_slice, lossy_note
from tests.core.codec_files import encode
from tests.core.ct_series import original_hu

LOSSLESS = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
]
LOSSY = [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless, uid.JPEG2000]


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda s: s.name)
def test_lossless_syntaxes_give_exactly_the_original_hu(syntax: uid.UID) -> None:
    encoded = encode(syntax)
    assert pydicom.dcmread(io.BytesIO(encoded.data)).file_meta.TransferSyntaxUID == syntax
    ct = load_slice(encoded.data, "slice.dcm")
    np.testing.assert_array_equal(ct.pixels, encoded.expected_hu)
    np.testing.assert_array_equal(ct.pixels, original_hu())  # the 12-bit copy (P14) holds every value too
    assert ct.lossy is None and lossy_note(ct) is None
    assert ct.spacing_mm == pytest.approx((0.661468, 0.661468))


@pytest.mark.parametrize("syntax", LOSSY, ids=lambda s: s.name)
def test_lossy_syntaxes_decode_close_and_say_so(syntax: uid.UID) -> None:
    encoded = encode(syntax)
    ct = load_slice(encoded.data, "slice.dcm")
    error = np.abs(ct.pixels - encoded.expected_hu)
    assert error.max() <= encoded.max_abs_error_hu
    assert error.mean() < 8.0  # HU: the image is the same image
    assert ct.lossy is not None
    note = lossy_note(ct)
    assert note is not None and "approximate" in note and note.endswith(".") and "\n" not in note


def test_jpeg_ls_near_lossless_stays_within_its_bound() -> None:
    encoded = encode(uid.JPEGLSNearLossless)  # NEAR = 3 stored units, slope 1 → ±3 HU
    ct = load_slice(encoded.data, "slice.dcm")
    assert 0 < np.abs(ct.pixels - encoded.expected_hu).max() <= 3


def test_jpeg_baseline_ct_is_lossy_8_bit() -> None:
    ct = load_slice(encode(uid.JPEGBaseline8Bit).data, "slice.dcm")
    assert ct.compression == "JPEG Baseline (8-bit, lossy)" and ct.lossy == "JPEG Baseline (8-bit, lossy)"
    assert lossy_note(ct) == (
        "This slice was stored with JPEG Baseline (8-bit, lossy): its Hounsfield units are approximate, so the "
        "model's estimate may differ from one on the original scan; use a lossless or uncompressed export when "
        "you can."
    )


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG-lossy.dcm"])
def test_third_party_12_bit_jpeg_extended_files_decode(name: str) -> None:
    # real 12-bit JPEG Extended files from pydicom's test set (NM, so decoded without load_slice's CT check)
    register_decoders()
    ds = pydicom.dcmread(get_testdata_file(name))
    pixels = ds.pixel_array
    assert pixels.shape == (1024, 256) and pixels.max() > 0 and compression_of(ds).lossy is True


@pytest.mark.parametrize(
    ("syntax", "plugin"),
    [
        (uid.JPEGLossless, "imagecodecs"),
        (uid.JPEGExtended12Bit, "imagecodecs"),
        (uid.JPEGLSLossless, "pyjpegls"),
        (uid.JPEG2000Lossless, "pylibjpeg"),
        (uid.RLELossless, "pydicom"),
    ],
)
def test_the_chosen_plugins_are_installed(syntax: uid.UID, plugin: str) -> None:
    register_decoders()
    assert plugin in get_decoder(syntax).available_plugins


def test_no_gpl_decoder_is_needed() -> None:
    import importlib.util

    assert importlib.util.find_spec("libjpeg") is None  # pylibjpeg-libjpeg (GPLv3) is not installed


def test_an_undecodable_compression_is_named() -> None:
    data = bytearray(encode(uid.JPEG2000Lossless).data)
    ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML  # a video syntax no plugin here decodes
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(UnreadableImageError) as caught:
        load_slice(buffer.getvalue(), "video.dcm")
    assert str(caught.value) == (
        "This CT file is compressed with MPEG2 Main Profile / Main Level, which this installation cannot decode; "
        "export the series uncompressed or with JPEG 2000 / JPEG-LS / JPEG Lossless from the PACS."
    )


def test_damaged_compressed_data_names_the_compression() -> None:
    ds = pydicom.dcmread(io.BytesIO(encode(uid.JPEGLSLossless).data))
    frame = bytearray(ds.PixelData)
    frame[40:] = b"\0" * (len(frame) - 40)  # keep the item header, destroy the code stream
    ds.PixelData = bytes(frame)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(UnreadableImageError) as caught:
        load_slice(buffer.getvalue(), "broken.dcm")
    assert str(caught.value).startswith("The CT pixel data, compressed with JPEG-LS lossless, cannot be decoded")
