"""Build small CT series, ZIPs and segmentations from pydicom's real ``CT_small.dcm`` for tests.

``CT_small.dcm`` is a real 128×128 CT slice (signed 16-bit, HU = stored − 1024, 0.66 mm
pixels, ContrastBolusAgent "ISOVUE300/100"). A series here is copies of it at positions
``z0 + k·dz`` along the normal, each with its own SOP Instance UID and ``k`` added to every
stored value, so a test can tell which slice it loaded: HU = original + k.
"""

from __future__ import annotations

import copy
import io
import zipfile
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORIENTATION = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@cache
def _ct_small() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def ct_small() -> Dataset:
    """A fresh copy of CT_small (pixels decoded once per process)."""
    return copy.deepcopy(_ct_small())


def original_hu() -> np.ndarray:
    ds = _ct_small()
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def plain(ds: Dataset) -> Dataset:
    """Remove the contrast tags (CT_small was taken with contrast)."""
    for keyword in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusStartTime"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def series_datasets(
    n: int,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    z0: float = -100.0,
    dz: float = 5.0,
    description: str = "Plain abdomen 5mm",
    contrast: bool = False,
    orientation: Sequence[float] = ORIENTATION,
) -> list[Dataset]:
    """``n`` slices of one series in position order (slice k at z0 + k·dz along the normal)."""
    base = ct_small()
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or base.StudyInstanceUID
    frame_uid = frame_uid or base.FrameOfReferenceUID
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    origin = -40.0 * row - 40.0 * col  # in the plane through the origin: position · normal = z0 + k·dz
    out = []
    for k in range(n):
        ds = copy.deepcopy(base)
        if not contrast:
            plain(ds)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = description
        # InstanceNumber deliberately in reverse of position, so sorting by it would be wrong
        ds.InstanceNumber = n - k
        position = origin + (z0 + k * dz) * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.SliceLocation = f"{z0 + k * dz:.4f}"
        ds.PixelData = (base.pixel_array.astype(np.int16) + k).astype(np.int16).tobytes()
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def as_files(datasets: Iterable[Dataset], prefix: str = "IM", seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, bytes) pairs, shuffled, with names that sort in neither position nor InstanceNumber order."""
    items = [(f"{prefix}{i:04d}", to_bytes(ds)) for i, ds in enumerate(datasets)]
    order = np.random.default_rng(seed).permutation(len(items))
    return [(f"{prefix}{j:04d}", items[i][1]) for j, i in enumerate(order)]


def zip_of(files: Iterable[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()
