"""Encode pydicom's real ``CT_small.dcm`` in every transfer syntax a PACS exports, for decode tests.

Encoders (all test-time only): pydicom itself (implicit/explicit VR, deflate, RLE),
``pyjpegls`` (JPEG-LS), ``pylibjpeg-openjpeg`` (JPEG 2000) through ``Dataset.compress``, and
``imagecodecs`` (libjpeg-turbo 3) for the JPEG processes pydicom cannot encode: Baseline
(8-bit), Extended (12-bit), Lossless process 14 (predictor 6) and process 14 SV1 (predictor 1).
Each returns the file's bytes and the HU the *uncompressed* original holds (for lossy
syntaxes: the HU of the reduced-precision original that was fed to the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from tests.core.ct_series import ct_small, plain, to_bytes


@dataclass(frozen=True)
class Encoded:
    data: bytes
    expected_hu: np.ndarray  # (rows, cols) float32, HU of what was encoded
    lossless: bool
    max_abs_error_hu: float  # 0 when lossless


def _hu(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    return (stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def _encapsulated(ds: Dataset, frame: bytes, syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds)


def _twelve_bit(ds: Dataset) -> np.ndarray:
    """The CT as unsigned 12-bit stored values (HU + 1024, as most scanners store them)."""
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    return stored


def encode(syntax: str) -> Encoded:
    """CT_small (contrast tags removed) in ``syntax``."""
    ds = plain(ct_small())
    stored = ds.pixel_array
    if syntax in (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        return Encoded(to_bytes(ds), _hu(ds, stored), True, 0.0)
    if syntax in (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless):
        ds.compress(syntax)
        return Encoded(to_bytes(ds), _hu(ds, stored), True, 0.0)
    if syntax == uid.JPEGLSNearLossless:
        ds.compress(syntax, jls_error=3)  # every stored value within ±3 of the original
        return Encoded(to_bytes(ds), _hu(ds, stored), False, 3.0)
    if syntax == uid.JPEG2000:
        ds.compress(syntax, j2k_cr=[8])  # 8:1, irreversible wavelet
        return Encoded(to_bytes(ds), _hu(ds, stored), False, 200.0)
    if syntax == uid.JPEGBaseline8Bit:
        # 8-bit CT: stored = (HU + 200) / 2, i.e. −200…310 HU in 2-HU steps (abdominal soft tissue)
        hu = _hu(ds, stored)
        stored8 = np.clip(np.round((hu + 200.0) / 2.0), 0, 255).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-200", "2"
        ds.LossyImageCompression = "01"
        frame = imagecodecs.jpeg8_encode(stored8, level=95)
        return Encoded(_encapsulated(ds, frame, syntax), _hu(ds, stored8), False, 60.0)
    if syntax == uid.JPEGExtended12Bit:
        stored12 = _twelve_bit(ds)
        ds.LossyImageCompression = "01"
        frame = imagecodecs.jpeg8_encode(stored12, level=95, bitspersample=12)
        return Encoded(_encapsulated(ds, frame, syntax), _hu(ds, stored12), False, 200.0)
    if syntax == uid.JPEGLossless:  # process 14, predictor 6, on 12-bit unsigned data
        stored12 = _twelve_bit(ds)
        frame = imagecodecs.jpeg8_encode(stored12, lossless=True, predictor=6, bitspersample=12)
        return Encoded(_encapsulated(ds, frame, syntax), _hu(ds, stored12), True, 0.0)
    if syntax == uid.JPEGLosslessSV1:  # process 14 SV1, on the original signed 16-bit data
        frame = imagecodecs.jpeg8_encode(stored.view(np.uint16), lossless=True, predictor=1, bitspersample=16)
        return Encoded(_encapsulated(ds, frame, syntax), _hu(ds, stored), True, 0.0)
    raise ValueError(f"no encoder for {syntax}")
