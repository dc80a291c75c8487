"""Fuzz every parser a user reaches with hostile input (issue 10).

Property, for each parser: whatever the bytes or JSON, either one of the project's own
errors escapes (a :class:`~core.errors.UserFacingError`, whose message is one line of plain
text), or the parser returns a correct result (a slice of a plausible size with finite HU,
masks of the image's shape and dtype bool, ...). Any other exception is a bug in the parser.
The memory one example takes at its peak (growth of the process's resident high-water mark,
which counts what C decoders allocate too; traced Python allocations where Linux cannot reset
that mark) must stay under :data:`MEMORY_BOUND`: a header declaring a huge image must be
refused before the image is allocated.

Inputs are mostly mutations of valid seed files built with the suite's own helpers (bit
flips, truncation, byte overwrites and insertions, interesting integers, hostile header
values written into real DICOM / NIfTI fields), plus pure random bytes.

Scale: ``ICCA_FUZZ_EXAMPLES=10`` runs ten times the default number of examples per parser
(the default keeps the file at about two minutes on two slow cores); ``ICCA_FUZZ_RANDOM=1``
draws new examples each run instead of the fixed, derandomised ones CI uses. At the end of
the module a table of executions, refusals and peak memory per parser is printed (and
written as JSON to ``$ICCA_FUZZ_REPORT`` when set).
"""

from __future__ import annotations

import copy
import csv
import functools
import gzip
import io
import json
import logging
import math
import os
import resource
import stat
import struct
import sys
import time
import tracemalloc
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.archive import unpack_upload
from core.cohort import CohortPatient, load_mask, read_manifest
from core.errors import ManifestError, UserFacingError
from core.imaging import CtSlice, display_image, load_slice, window_presets
from core.limits import MAX_SIDE_PX, MIN_SIDE_PX
from core.phantom import write_cohort
from core.roi import CanvasView, mask_from_fabric, outlines_from_fabric
from core.segmentation import (
    ImportedOutline,
    export_seg,
    import_nifti,
    import_png_mask,
    import_seg,
    nifti_labels,
    read_outline,
    seg_segments,
)
from core.series import SeriesSummary, UploadScan, load_series_slice, scan_upload, series_label
from tests.core.codec_files import encode
from tests.core.ct_series import as_files, plain, series_datasets, to_bytes, zip_of
from tests.core.test_segmentation import _nifti, _seg, _strip_references

_T = TypeVar("_T")

# Hostile headers make pydicom warn and log on almost every example; the property is about what escapes.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

SCALE = float(os.environ.get("ICCA_FUZZ_EXAMPLES", "1"))
# Derandomised by default so CI sees the same examples every run (a failure reproduces).
DERANDOMIZE = os.environ.get("ICCA_FUZZ_RANDOM", "") in ("", "0")
# Peak memory of one example. The largest image a parser admits is 4096² (core.limits): decoded
# at 32 bits with its float copies it needs about 256 MiB; a 65535² header would need 16 GiB.
MEMORY_BOUND = 512 * 1024**2
# Growth of the process's peak resident memory over the whole module.
RSS_GROWTH_BOUND = 2 * 1024**3


def _proc_status_bytes(name: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def _can_reset_peak_rss() -> bool:
    """Linux lets a process restart its resident high-water mark (writing 5 to clear_refs, since 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmHWM") > 0
    except (OSError, KeyError):
        return False


# tracemalloc would see only Python and numpy allocations, and slows the parsers about sevenfold
RSS_METER = _can_reset_peak_rss()


def _memory_mark() -> int:
    """Start measuring one example's peak; returns the baseline to subtract."""
    if RSS_METER:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the resident size now
        return _proc_status_bytes("VmRSS")
    tracemalloc.reset_peak()
    return tracemalloc.get_traced_memory()[0]


def _memory_peak(baseline: int) -> int:
    """Bytes the example added at its peak, since :func:`_memory_mark`."""
    peak = _proc_status_bytes("VmHWM") if RSS_METER else tracemalloc.get_traced_memory()[1]
    return max(0, peak - baseline)


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for one parser: ``examples`` × ICCA_FUZZ_EXAMPLES, no deadline, no database."""
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,  # time is bounded by the example count; a slow example is not a failure
        database=None,  # never write .hypothesis/ into the repository
        derandomize=DERANDOMIZE,
        suppress_health_check=list(HealthCheck),  # seeds are large and some parsers slow, on purpose
        print_blob=True,
    )


# --------------------------------------------------------------------------------- tallies


@dataclass
class _Tally:
    """What one parser did over the run."""

    executions: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    peak_bytes: int = 0
    slowest_s: float = 0.0


_TALLIES: dict[str, _Tally] = {}


def exercise(parser: str, call: Callable[[], _T]) -> _T | None:
    """Run one parser on one input: its result, or ``None`` when it refused with a UserFacingError.

    Any other exception propagates (the property fails). The refusal's message must be one
    line of text; the example's memory peak must stay under :data:`MEMORY_BOUND`.
    """
    tally = _TALLIES.setdefault(parser, _Tally())
    tally.executions += 1
    baseline = _memory_mark()
    start = time.perf_counter()
    result: _T | None = None
    try:
        result = call()
    except UserFacingError as error:
        message = str(error)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        assert "Traceback" not in message and "Errno" not in message, message
        tally.refused[type(error).__name__] += 1
    else:
        tally.accepted += 1
    tally.slowest_s = max(tally.slowest_s, time.perf_counter() - start)
    peak = _memory_peak(baseline)
    tally.peak_bytes = max(tally.peak_bytes, peak)
    assert peak < MEMORY_BOUND, f"{parser} peaked at {peak / 1024**2:.0f} MiB on one input"
    return result


@pytest.fixture(scope="module", autouse=True)
def _memory_and_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Quiet pydicom's log and set up the memory meter; at the end, print (and optionally save) the tallies."""
    _TALLIES.clear()
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)
    started = not RSS_METER and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall = time.perf_counter()
    yield
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    if started:
        tracemalloc.stop()
    pydicom_log.setLevel(level)
    lines = [
        f"fuzz: {sum(t.executions for t in _TALLIES.values())} executions in {time.perf_counter() - wall:.0f} s "
        f"(ICCA_FUZZ_EXAMPLES={SCALE:g}); peak RSS grew {rss_growth / 1024**2:.0f} MiB; per-example peak "
        f"measured as {'resident high-water mark growth' if RSS_METER else 'traced allocations'}",
        f"{'parser':44} {'runs':>6} {'ok':>6} {'refused':>8} {'peak MiB':>9} {'slowest s':>9}  refusals",
    ]
    for name, tally in _TALLIES.items():
        refusals = ", ".join(f"{kind} {count}" for kind, count in tally.refused.most_common())
        lines.append(
            f"{name:44} {tally.executions:6} {tally.accepted:6} {sum(tally.refused.values()):8} "
            f"{tally.peak_bytes / 1024**2:9.1f} {tally.slowest_s:9.2f}  {refusals}"
        )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines), file=sys.stderr)
    report = os.environ.get("ICCA_FUZZ_REPORT")
    if report:
        Path(report).write_text(
            json.dumps(
                {
                    "scale": SCALE,
                    "rss_growth_bytes": rss_growth,
                    "parsers": {
                        name: {
                            "executions": t.executions,
                            "accepted": t.accepted,
                            "refused": dict(t.refused),
                            "peak_bytes": t.peak_bytes,
                            "slowest_s": round(t.slowest_s, 3),
                        }
                        for name, t in _TALLIES.items()
                    },
                },
                indent=2,
            )
        )
    assert rss_growth < RSS_GROWTH_BOUND, f"peak resident memory grew {rss_growth / 1024**2:.0f} MiB"


# --------------------------------------------------------------------------------- mutations

# Values at the edges of 8-, 16- and 32-bit fields, where parsers mis-size buffers.
_EDGE_INTS = (0, 1, 2, 7, 8, 15, 16, 31, 32, 33, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000)
_EDGE_INTS += (0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_OPS = ("flip", "byte", "int", "overwrite", "insert", "delete", "truncate", "duplicate")


@dataclass(frozen=True)
class Seed:
    """A valid file to mutate, and how many leading bytes are header (where mutations pay most)."""

    name: str
    data: bytes
    header: int

    def __repr__(self) -> str:  # hypothesis prints a failing example's arguments: not 40 kB of bytes
        return f"Seed({self.name!r}, {len(self.data)} bytes)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what hypothesis's printer calls
        printer.text(repr(self))

    @classmethod
    def dicom(cls, name: str, data: bytes) -> Seed:
        """Header: everything up to the pixel data element (or the whole file without one)."""
        at = data.rfind(b"\xe0\x7f\x10\x00")
        return cls(name, data, at + 16 if at >= 0 else len(data))


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[Seed], max_ops: int = 4) -> bytes:
    """One seed with 1–``max_ops`` byte-level mutations, mostly in its header or its last bytes."""
    seed = draw(st.sampled_from(seeds))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, max_ops))):
        size = len(data)
        head = max(1, min(size, seed.header))
        # the header (where every field a parser trusts lives), the last bytes (ZIP directories,
        # trailers) or anywhere; one_of would merge equal ranges, so the region is drawn first
        region = draw(st.sampled_from(("header", "tail", "anywhere")))
        low = max(0, size - 512) if region == "tail" else 0
        high = head - 1 if region == "header" else max(0, size - 1)
        pos = draw(st.integers(low, high))
        op = draw(st.sampled_from(_OPS))
        if op == "flip" and size:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and size:
            data[pos] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)))
        elif op == "int":
            width = draw(st.sampled_from((2, 4)))
            value = draw(st.sampled_from(_EDGE_INTS)) & ((1 << (8 * width)) - 1)
            data[pos : pos + width] = value.to_bytes(width, draw(st.sampled_from(("little", "big"))))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=32))
            data[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            length = draw(st.integers(1, 256))
            data[pos:pos] = data[pos : pos + length]
    return bytes(data)


def fix_png_crcs(data: bytes) -> bytes:
    """The PNG with every whole chunk's CRC recomputed, so libpng reads damaged values instead of stopping."""
    out = bytearray(data)
    pos = 8
    while pos + 12 <= len(out):
        length = int.from_bytes(out[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = zlib.crc32(out[pos + 4 : end]).to_bytes(4, "big")
        pos = end + 4
    return bytes(out)


# IHDR and SOF values where decoders mis-size: empty, tiny, the limits, 2**16, 2**31, 2**32 − 1.
_SIDES = (0, 1, 31, 32, 4096, 4097, 30000, 65535, 65536, 2**31 - 1, 2**32 - 1)


@st.composite
def raster_mutated(draw: st.DrawFn, seeds: Sequence[Seed]) -> bytes:
    """A PNG / JPEG seed with hostile sizes, bit depths or colour types in its header, then byte mutations.

    Half the time a PNG's CRCs are made right again: libpng stops at a bad CRC, and the
    values behind it are where decoders go wrong.
    """
    data = bytearray(draw(mutated(seeds, max_ops=2)) if draw(st.booleans()) else draw(st.sampled_from(seeds)).data)
    if data.startswith(b"\x89PNG") and len(data) >= 29 and draw(st.booleans()):
        width, height = draw(st.sampled_from(_SIDES)), draw(st.sampled_from(_SIDES))
        data[16:24] = struct.pack(">II", width, height)
        data[24] = draw(st.sampled_from((0, 1, 2, 3, 4, 8, 16, 255)))  # bit depth
        data[25] = draw(st.sampled_from((0, 1, 2, 3, 4, 6, 7)))  # colour type
    at = data.find(b"\xff\xc0") if data.startswith(b"\xff\xd8") else -1
    at = data.find(b"\xff\xc2") if at < 0 and data.startswith(b"\xff\xd8") else at
    if at >= 0 and at + 9 <= len(data) and draw(st.booleans()):
        height, width = draw(st.sampled_from(_SIDES)), draw(st.sampled_from(_SIDES))
        data[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    if data.startswith(b"\x89PNG") and draw(st.booleans()):
        return fix_png_crcs(bytes(data))
    return bytes(data)


def random_bytes(magics: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """Pure random bytes, some starting with a format's magic so they reach its parser."""
    noise = st.binary(max_size=2048)
    if not magics:
        return noise
    return st.one_of(noise, st.builds(lambda magic, tail: magic + tail, st.sampled_from(magics), noise))


# Hostile header values, as the raw bytes of the element's value (read back in the file's VR).
_HOSTILE_NUMBER_TEXT = (
    "nan", "NaN", "inf", "-inf", "1e309", "-1e309", "0", "-0", "-1", "1e-320", "1e308", "", " ", "\\",
    "1\\2\\3", "abc", "1,5", "0.5\\nan", "0\\0", "-0.7\\-0.7", "9" * 64, "\0\0", "1e5\\1e5", "0.0001\\0.0001",
)  # fmt: skip
_HOSTILE_INTEGER_TEXT = ("0", "-1", "2", "99999999999999999999", "", "1.5", "abc", "+1", " 1 ")
_HOSTILE_CODE_TEXT = (
    "CT", "MR", "SEG", "", "\0\0", "MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "ct", "CT\\MR", "X" * 300,
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.1.1.2.1",
)  # fmt: skip
_US_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel")
_DS_KEYWORDS = (
    "RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
    "SliceThickness", "WindowCenter", "WindowWidth",
)  # fmt: skip
_IS_KEYWORDS = ("NumberOfFrames", "InstanceNumber")
_CODE_KEYWORDS = (
    "Modality", "PhotometricInterpretation", "SOPClassUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID", "ContrastBolusAgent", "SeriesDescription", "ConvolutionKernel",
)  # fmt: skip


def hostile_element() -> st.SearchStrategy[tuple[str, bytes]]:
    """(keyword, raw value bytes): huge / zero / wrong-length integers, NaN and inf numbers, odd codes."""
    us_raw = st.one_of(
        st.sampled_from(_EDGE_INTS).map(lambda v: (v & 0xFFFF).to_bytes(2, "little")),
        st.binary(max_size=6),  # wrong lengths: 0, 1, 3, 4 … bytes for a 2-byte field
    )

    def encoded(values: Sequence[str]) -> st.SearchStrategy[bytes]:
        return st.sampled_from(values).map(lambda text: text.encode("latin-1"))

    return st.one_of(
        st.tuples(st.sampled_from(_US_KEYWORDS), us_raw),
        st.tuples(st.sampled_from(_DS_KEYWORDS), encoded(_HOSTILE_NUMBER_TEXT)),
        st.tuples(st.sampled_from(_IS_KEYWORDS), encoded(_HOSTILE_INTEGER_TEXT)),
        st.tuples(st.sampled_from(_CODE_KEYWORDS), encoded(_HOSTILE_CODE_TEXT)),
        st.tuples(st.just("PixelData"), st.sampled_from((b"", b"\0", b"\0" * 32767, b"\0" * 32769, b"\xff" * 65536))),
    )


# Explicit-VR elements whose length field is 4 bytes (after 2 reserved bytes), not 2.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


@functools.cache
def _in_syntax(data: bytes, implicit: bool) -> bytes:
    """A valid DICOM file rewritten (once) in implicit or explicit VR little endian."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return to_bytes(ds)


@functools.cache
def _element_starts(data: bytes) -> tuple[bool, dict[int, int]]:
    """Whether the file is implicit VR, and the byte offset of each top-level element of its dataset."""
    ds = pydicom.dcmread(io.BytesIO(data))
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    starts = {}
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        tell = elem.value_tell if isinstance(elem, RawDataElement) else elem.file_tell
        start = tell - (8 if implicit or elem.VR not in _LONG_VRS else 12)
        assert data[start : start + 4] == struct.pack("<HH", tag.group, tag.element), tag
        starts[int(tag)] = start
    return implicit, starts


def with_elements(data: bytes, changes: Sequence[tuple[str, bytes]], implicit: bool) -> bytes:
    """``data`` (a valid DICOM file) with each keyword's element replaced, or added, with exactly these value bytes.

    Spliced into the file's bytes rather than written by pydicom, which would refuse or
    "correct" most hostile values. In explicit VR the element says VR UN, which pydicom reads
    back in the dictionary's VR from these very bytes; in implicit VR the dictionary's VR
    applies anyway: any length or content reaches the parser, as in a damaged file.
    """
    data = _in_syntax(data, implicit)
    implicit, starts = _element_starts(data)
    order = sorted(starts)
    edits: dict[int, bytes] = {}
    for keyword, raw in changes:
        tag = int(Tag(tag_for_keyword(keyword)))
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        head += struct.pack("<I", len(raw)) if implicit else b"UN\0\0" + struct.pack("<I", len(raw))
        edits[tag] = head + raw
    out = bytearray(data)
    for tag in sorted(edits, reverse=True):  # from the end, so earlier offsets stay right
        later = [t for t in order if t > tag]
        at = starts[later[0]] if later else len(data)
        begin = starts.get(tag, at)
        out[begin:at] = edits[tag]
    return bytes(out)


# --------------------------------------------------------------------------------- seeds


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _jpeg(image: np.ndarray, progressive: bool = False) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    )
    assert ok
    return encoded.tobytes()


@functools.cache
def _raster_seeds() -> list[Seed]:
    """Small PNG and JPEG exports, greyscale and colour, 8- and 16-bit (cv2 as a viewer would write them)."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    files = [
        ("grey.png", _png(grey)),
        ("grey16.png", _png(grey.astype(np.uint16) * 257)),
        ("rgba.png", _png(np.dstack([grey, grey, grey, grey]))),
        ("grey.jpg", _jpeg(grey)),
        ("colour.jpg", _jpeg(np.dstack([grey, 255 - grey, grey]))),
        ("progressive.jpg", _jpeg(grey, progressive=True)),
    ]
    return [Seed(name, data, 128) for name, data in files]


@functools.cache
def _plain_slice() -> bytes:
    """CT_small without contrast tags, with geometry: the base for hostile header values."""
    return to_bytes(plain(series_datasets(1)[0]))


@pytest.fixture(scope="module")
def dicom_seeds() -> list[Seed]:
    """CT_small in every transfer syntax the reader decodes, plus MR, a SEG and a slice with geometry."""
    syntaxes = {
        "explicit": "1.2.840.10008.1.2.1",
        "implicit": "1.2.840.10008.1.2",
        "deflated": "1.2.840.10008.1.2.1.99",
        "rle": "1.2.840.10008.1.2.5",
        "jpeg-ls": "1.2.840.10008.1.2.4.80",
        "jpeg2000": "1.2.840.10008.1.2.4.90",
        "jpeg-baseline": "1.2.840.10008.1.2.4.50",
        "jpeg-lossless-sv1": "1.2.840.10008.1.2.4.70",
    }
    seeds = [Seed.dicom(name, encode(syntax).data) for name, syntax in syntaxes.items()]
    seeds.append(Seed.dicom("series-slice", to_bytes(series_datasets(1)[0])))
    for name in ("MR_small.dcm", "liver_1frame.dcm"):
        seeds.append(Seed.dicom(name, Path(str(get_testdata_file(name))).read_bytes()))
    return seeds


@dataclass(frozen=True)
class Study:
    """A 3-slice CT series as uploaded and scanned, and a tumour on slices 0–1."""

    datasets: list[pydicom.Dataset]
    files: list[tuple[str, bytes]]
    scan: UploadScan
    tumour: np.ndarray

    @property
    def series(self) -> SeriesSummary:
        return self.scan.series[0]

    def __repr__(self) -> str:  # not megabytes of datasets in a failure report
        return f"Study({len(self.files)} slices)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@pytest.fixture(scope="module")
def study() -> Study:
    """The series tests/core/test_segmentation.py builds, shorter."""
    datasets = series_datasets(3)
    files = as_files(datasets, seed=5)
    tumour = np.zeros((3, 128, 128), dtype=bool)
    tumour[0, 40:50, 40:52] = True
    tumour[1, 30:70, 35:80] = True
    return Study(datasets, files, scan_upload(files), tumour)


def _check_slice(ct: CtSlice) -> None:
    """What every caller of load_slice relies on."""
    assert isinstance(ct, CtSlice)
    assert ct.pixels.dtype == np.float32 and ct.pixels.ndim == 2
    assert min(ct.shape) >= MIN_SIDE_PX and max(ct.shape) <= MAX_SIDE_PX
    assert np.isfinite(ct.pixels).all()
    if ct.spacing_mm is not None:
        assert all(math.isfinite(v) and v > 0 for v in ct.spacing_mm)
    json.dumps(ct.summary())  # python -m core inspect prints it
    for level, width in window_presets(ct).values():
        assert display_image(ct, level, width).shape == ct.shape


# --------------------------------------------------------------------------------- DICOM and raster slices


@given(data=st.data())
@fuzz_settings(examples=1000)
def test_load_slice_dicom(dicom_seeds: list[Seed], data: st.DataObject) -> None:
    """load_slice on mutated DICOM (bytes, hostile header values) and random bytes: a sentence or a sound slice."""
    how = data.draw(st.sampled_from(("bytes", "bytes", "elements", "random")), label="how")
    if how == "bytes":
        blob = data.draw(mutated(dicom_seeds), label="mutated")
    elif how == "elements":
        changes = data.draw(st.lists(hostile_element(), min_size=1, max_size=3), label="changes")
        blob = with_elements(_plain_slice(), changes, implicit=data.draw(st.booleans(), label="implicit"))
    else:
        blob = data.draw(random_bytes((b"\0" * 128 + b"DICM", b"\x08\x00\x05\x00CS")), label="random")
    name = data.draw(st.sampled_from(("IM0001", "slice.dcm", "a.png", "")), label="name")
    ct = exercise("load_slice: DICOM", lambda: load_slice(blob, name))
    if ct is not None:
        _check_slice(ct)


@given(data=st.data())
@fuzz_settings(examples=500)
def test_load_slice_raster(data: st.DataObject) -> None:
    """load_slice on mutated PNG / JPEG exports: a sentence or a grey slice of a plausible size."""
    seeds = _raster_seeds()
    how = data.draw(st.sampled_from(("header", "bytes", "random")), label="how")
    if how == "header":
        blob = data.draw(raster_mutated(seeds), label="header")
    elif how == "bytes":
        blob = data.draw(mutated(seeds), label="mutated")
    else:
        blob = data.draw(random_bytes((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")), label="random")
    ct = exercise("load_slice: PNG/JPEG", lambda: load_slice(blob, "export.png"))
    if ct is not None:
        _check_slice(ct)
        assert not ct.is_hu and ct.spacing_mm is None


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side × side black pixels: 0.1 MB that decodes to side² bytes of greyscale.

    30000² is 900 MB, yet under OpenCV's own cap (2**30 pixels).
    """
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_huge_declared_raster_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A decompression bomb (30000² px in 0.1 MB) as a slice, an outline or a manifest's mask, and a JPEG
    declaring 30000² px: refused from the header, before OpenCV allocates the image."""
    bomb = png_bomb()
    assert exercise("load_slice: PNG/JPEG", lambda: load_slice(bomb, "huge.png")) is None
    with pytest.raises(UserFacingError, match="30000×30000 pixels, larger than 4096 px a side"):
        load_slice(bomb, "huge.png")
    assert exercise("import_png_mask", lambda: import_png_mask(bomb, (128, 128))) is None
    jpeg = bytearray(_jpeg(np.zeros((40, 48), np.uint8)))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # the frame header's height and width
    assert exercise("load_slice: PNG/JPEG", lambda: load_slice(bytes(jpeg), "huge.jpg")) is None
    with pytest.raises(UserFacingError, match="30000×30000 pixels, larger than 4096 px a side"):
        load_slice(bytes(jpeg), "huge.jpg")
    (tmp_path / "mask.png").write_bytes(bomb)
    # load_mask is how read_manifest reads every row's mask
    assert exercise("read_manifest", lambda: load_mask(tmp_path / "mask.png")) is None
    with pytest.raises(UserFacingError, match="30000×30000 pixels, larger than 4096 px a side"):
        load_mask(tmp_path / "mask.png")


def test_huge_declared_dicom_is_refused_before_it_is_decoded() -> None:
    """Rows = Columns = 65535 with 32 bits per pixel (16 GiB) is refused from the header alone."""
    huge = [("Rows", b"\xff\xff"), ("Columns", b"\xff\xff")]
    bits = [("BitsAllocated", b"\x20\x00"), ("BitsStored", b"\x20\x00"), ("HighBit", b"\x1f\x00")]
    blob = with_elements(_plain_slice(), huge + bits, implicit=False)
    assert exercise("load_slice: DICOM", lambda: load_slice(blob, "huge.dcm")) is None
    with pytest.raises(UserFacingError, match="65535×65535 pixels, larger than 4096 px a side"):
        load_slice(blob, "huge.dcm")


def test_huge_declared_nifti_is_refused_before_it_is_read(nifti_seeds: list[Seed]) -> None:
    """A NIfTI header declaring 2048 × 2048 × 100 int16 voxels (800 MiB), with none behind it, is refused unread."""
    data = bytearray(nifti_seeds[0].data)
    struct.pack_into("<8h", data, 40, 3, 2048, 2048, 100, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", data, 70, 4, 16)  # datatype int16, bitpix
    assert exercise("nifti_labels", lambda: nifti_labels(bytes(data))) is None
    with pytest.raises(UserFacingError, match="fewer voxels than its header declares"):
        nifti_labels(bytes(data))


# --------------------------------------------------------------------------------- series folders and ZIPs


def _check_scan(scan: UploadScan) -> list[tuple[SeriesSummary, int]]:
    """Scan invariants; the (series, index) slices worth loading (first, middle, last)."""
    assert isinstance(scan, UploadScan)
    wanted = []
    for series in scan.series:
        assert series.slice_count >= 1
        assert all(0 <= entry.file_index < len(scan.files) for entry in series.slices)
        json.dumps(series.as_dict())
        assert series_label(series)
        series.contrast_warning()
        if series.usable:
            wanted += [(series, i) for i in sorted({0, series.slice_count // 2, series.slice_count - 1})]
    for other in scan.others:
        assert 0 <= other.file_index < len(scan.files)
    return wanted


def _load_slices(parser: str, scan: UploadScan) -> None:
    for series, index in _check_scan(scan)[:4]:
        loaded = exercise(parser, lambda s=series, i=index: load_series_slice(scan, s.key, i))
        if loaded is not None:
            _check_slice(loaded.ct)
            assert loaded.ct.shape == (series.rows, series.columns)


def exercise_upload(parser: str, files: list[tuple[str, bytes]]) -> None:
    """scan_upload, then a few of its slices loaded."""
    scan = exercise(parser, lambda: scan_upload(files))
    if scan is not None:
        _load_slices("load_series_slice", scan)


@given(data=st.data())
@fuzz_settings(examples=400)
def test_scan_upload_series(study: Study, data: st.DataObject) -> None:
    """scan_upload + load_series_slice on a series folder with some files damaged or hostile."""
    files = list(study.files)
    for _ in range(data.draw(st.integers(1, 2), label="damaged files")):
        index = data.draw(st.integers(0, len(files) - 1), label="which")
        name, blob = study.files[index]
        how = data.draw(st.sampled_from(("bytes", "elements", "random")), label="how")
        if how == "bytes":
            blob = data.draw(mutated([Seed.dicom(name, blob)]), label="mutated")
        elif how == "elements":
            changes = data.draw(st.lists(hostile_element(), min_size=1, max_size=3), label="changes")
            blob = with_elements(blob, changes, implicit=data.draw(st.booleans(), label="implicit"))
        else:
            blob = data.draw(random_bytes(), label="random")
        files[index] = (name, blob)
    if data.draw(st.booleans(), label="extra file"):
        extra = data.draw(st.sampled_from(_raster_seeds()), label="extra")
        files.append((extra.name, extra.data))
    exercise_upload("scan_upload: series folder", files)


@pytest.fixture(scope="module")
def zip_seeds(study: Study) -> list[Seed]:
    """ZIPs of two slices: deflated, stored, in folders with macOS junk, and with unsafe paths."""
    two = study.files[:2]
    seeds = [
        Seed("deflated.zip", zip_of(two), 256),
        Seed("stored.zip", zip_of(two, zipfile.ZIP_STORED), 256),
        Seed("lzma.zip", zip_of(two, zipfile.ZIP_LZMA), 256),
        Seed("folders.zip", zip_of([(f"study/series/{n}", b) for n, b in two] + [("__MACOSX/._x", b"x")]), 256),
    ]
    for name in ("../escape.dcm", "/abs.dcm", "C:/x.dcm"):
        seeds.append(Seed(name, zip_of([(name, two[0][1])]), 256))
    link = zipfile.ZipInfo("link.dcm")
    link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(link, "/etc/passwd")
    seeds.append(Seed("symlink.zip", buffer.getvalue(), 256))
    return seeds


_ENTRY_NAMES = ("IM0001", "a/b/IM2", "../x.dcm", "/abs", "C:\\x", "__MACOSX/._IM", "dir/", "x" * 300, "ü.dcm")


@given(data=st.data())
@fuzz_settings(examples=400)
def test_scan_upload_zip(study: Study, zip_seeds: list[Seed], data: st.DataObject) -> None:
    """unpack_upload / scan_upload of a damaged ZIP, or a sound ZIP of damaged files under odd names."""
    how = data.draw(st.sampled_from(("container", "container", "members", "random")), label="how")
    if how == "container":
        blob = data.draw(mutated(zip_seeds, max_ops=3), label="mutated")
    elif how == "members":
        members = []
        for index in data.draw(st.lists(st.integers(0, len(study.files) - 1), min_size=1, max_size=3), label="files"):
            name, content = study.files[index]
            if data.draw(st.booleans(), label="damaged"):
                content = data.draw(mutated([Seed.dicom(name, content)]), label="member")
            members.append((data.draw(st.sampled_from((name, *_ENTRY_NAMES)), label="name"), content))
        method = data.draw(st.sampled_from((zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2)))
        blob = zip_of(members, method)
    else:
        blob = data.draw(random_bytes((b"PK\x03\x04", b"PK\x05\x06")), label="random")
    files = exercise("unpack_upload: ZIP", lambda: unpack_upload([("upload.zip", blob)]))
    if files is not None:
        assert all(item.data for item in files)
    exercise_upload("scan_upload: ZIP", [("upload.zip", blob)])


# --------------------------------------------------------------------------------- imported outlines


def _check_outline(outline: ImportedOutline, shape: tuple[int, int], slices: int) -> None:
    assert outline.shape == shape and outline.masks
    for index, mask in outline.masks.items():
        assert 0 <= index < slices
        assert mask.shape == shape and mask.dtype == bool and mask.any()
    assert outline.default_index in outline.masks


@pytest.fixture(scope="module")
def seg_seeds(study: Study) -> list[Seed]:
    """SEGs matched by reference, by position, one exported by this tool, and pydicom's real one."""
    tumour = study.tumour
    by_reference = _seg(study.datasets, tumour)
    loaded = load_series_slice(study.scan, study.series.key, 1)
    assert loaded.ct.source_ref is not None
    return [
        Seed.dicom("multi-frame.seg", by_reference),
        Seed.dicom("by-position.seg", _strip_references(by_reference)),
        Seed.dicom("one-frame.seg", export_seg(tumour[1], loaded.ct.source_ref)),
        Seed.dicom("liver_1frame.dcm", Path(str(get_testdata_file("liver_1frame.dcm"))).read_bytes()),
    ]


_SEG_KEYWORDS = ("NumberOfFrames", "Rows", "Columns", "BitsAllocated", "FrameOfReferenceUID", "SOPClassUID")


@given(data=st.data())
@fuzz_settings(examples=200)
def test_import_seg(study: Study, seg_seeds: list[Seed], data: st.DataObject) -> None:
    """seg_segments / import_seg on damaged DICOM SEGs, onto the series and onto one loaded slice."""
    scan, series = study.scan, study.series
    how = data.draw(st.sampled_from(("bytes", "bytes", "elements", "random")), label="how")
    if how == "bytes":
        blob = data.draw(mutated(seg_seeds), label="mutated")
    elif how == "elements":
        seed = data.draw(st.sampled_from(seg_seeds[:3]), label="seed")
        changes = data.draw(
            st.lists(hostile_element().filter(lambda c: c[0] in _SEG_KEYWORDS or c[0] == "PixelData"), max_size=2)
            | st.lists(st.tuples(st.sampled_from(_SEG_KEYWORDS), st.binary(max_size=8)), min_size=1, max_size=2),
            label="changes",
        )
        blob = with_elements(seed.data, changes, implicit=False)
    else:
        blob = data.draw(random_bytes((b"\0" * 128 + b"DICM",)), label="random")
    exercise("seg_segments", lambda: seg_segments(blob))
    target: SeriesSummary | CtSlice = series
    if data.draw(st.booleans(), label="onto one slice"):
        target = load_series_slice(scan, series.key, 1).ct
    outline = exercise("import_seg", lambda: import_seg(blob, target))
    if outline is not None:
        _check_outline(outline, (128, 128), series.slice_count)


@pytest.fixture(scope="module")
def nifti_seeds(study: Study) -> list[Seed]:
    """NIfTI-1 masks (binary, label map, probability map) on the series' grid, and a NIfTI-2."""
    series, tumour = study.series, study.tumour
    labels = tumour.astype(np.uint8)
    labels[1, 10:20, 10:20] = 2
    probability = nib.Nifti1Image.from_bytes(_nifti(series, tumour))
    floats = nib.Nifti1Image(np.asanyarray(probability.dataobj).astype(np.float32) * 0.8, probability.affine)
    nifti2 = nib.Nifti2Image(np.asanyarray(probability.dataobj), probability.affine)
    return [
        Seed("mask.nii", _nifti(series, tumour), 352),
        Seed("labels.nii", _nifti(series, labels), 352),
        Seed("probability.nii", floats.to_bytes(), 352),
        Seed("mask.nii2", nifti2.to_bytes(), 544),
    ]


# NIfTI-1 header fields (offset, struct format) a hostile file would set: dim, datatype, bitpix,
# pixdim, vox_offset, scl_slope / scl_inter, qform / sform codes, quaternion and srow affine.
_NIFTI1_FIELDS = (
    (40, "<8h"), (70, "<h"), (72, "<h"), (76, "<8f"), (108, "<f"), (112, "<f"), (116, "<f"),
    (252, "<h"), (254, "<h"), (256, "<6f"), (280, "<4f"), (296, "<4f"), (312, "<4f"),
)  # fmt: skip
_HOSTILE_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -1.0, 1e38, -1e38, 1e-45, 1.0, 0.5)
_HOSTILE_SHORTS = (0, 1, 2, 3, 4, 7, 8, -1, -32768, 32767, 2048, 4096, 4097)
# NIfTI datatype codes: bool, the integers, floats, complex, RGB, RGBA, float128, and unknown ones
_DATATYPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 3, -1)


@st.composite
def nifti_fields(draw: st.DrawFn, seed: bytes) -> bytes:
    """A NIfTI-1 seed with 1–3 header fields set to hostile values (NaN affine, huge dims, odd types)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        offset, fmt = draw(st.sampled_from(_NIFTI1_FIELDS))
        count = struct.calcsize(fmt) // struct.calcsize(fmt[-1])
        pool = _HOSTILE_FLOATS if fmt.endswith("f") else _DATATYPES if offset == 70 else _HOSTILE_SHORTS
        values = draw(st.lists(st.sampled_from(pool), min_size=count, max_size=count))
        struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


@given(data=st.data())
@fuzz_settings(examples=500)
def test_import_nifti(study: Study, nifti_seeds: list[Seed], data: st.DataObject) -> None:
    """nifti_labels / import_nifti on damaged NIfTI (header fields, bytes, gzip): a sentence or masks."""
    series = study.series
    how = data.draw(st.sampled_from(("fields", "fields", "bytes", "random")), label="how")
    if how == "fields":
        blob = data.draw(nifti_fields(data.draw(st.sampled_from(nifti_seeds[:3]), label="seed").data), label="fields")
    elif how == "bytes":
        blob = data.draw(mutated(nifti_seeds), label="mutated")
    else:
        blob = data.draw(random_bytes((b"\x1f\x8b",)), label="random")
    if data.draw(st.booleans(), label="gzip"):
        blob = gzip.compress(blob, compresslevel=1)
    exercise("nifti_labels", lambda: nifti_labels(blob))
    outline = exercise("import_nifti", lambda: import_nifti(blob, series))
    if outline is not None:
        _check_outline(outline, (128, 128), series.slice_count)


@functools.cache
def _mask_seeds() -> list[Seed]:
    """PNG masks of the slice's size: 8-bit, 16-bit, drawn in the alpha channel, and in colour."""
    mask = np.zeros((128, 128), np.uint8)
    mask[30:70, 35:80] = 255
    rgba = np.zeros((128, 128, 4), np.uint8)
    rgba[..., 3] = mask
    files = [
        ("mask.png", _png(mask)),
        ("mask16.png", _png(mask.astype(np.uint16) * 257)),
        ("alpha.png", _png(rgba)),
        ("colour.png", _png(np.dstack([mask, mask // 2, mask]))),
    ]
    return [Seed(name, data, 128) for name, data in files]


@given(data=st.data())
@fuzz_settings(examples=500)
def test_import_png_mask(data: st.DataObject) -> None:
    """import_png_mask on damaged PNG masks: a sentence or a (128, 128) bool mask, neither empty nor full."""
    how = data.draw(st.sampled_from(("header", "bytes", "random")), label="how")
    if how == "header":
        blob = data.draw(raster_mutated(_mask_seeds()), label="header")
    elif how == "bytes":
        blob = data.draw(mutated(_mask_seeds()), label="mutated")
    else:
        blob = data.draw(random_bytes((b"\x89PNG\r\n\x1a\n",)), label="random")
    mask = exercise("import_png_mask", lambda: import_png_mask(blob, (128, 128)))
    if mask is not None:
        assert mask.shape == (128, 128) and mask.dtype == bool and mask.any() and not mask.all()


@given(data=st.data())
@fuzz_settings(examples=200)
def test_read_outline_dispatch(
    study: Study, seg_seeds: list[Seed], nifti_seeds: list[Seed], data: st.DataObject
) -> None:
    """read_outline, the page's one entry point, on any damaged outline file under any name."""
    series = study.series
    blob = data.draw(mutated([*seg_seeds, *nifti_seeds, *_mask_seeds()]), label="mutated")
    name = data.draw(st.sampled_from(("outline.dcm", "outline.nii", "outline.nii.gz", "mask.png", "x")), label="name")
    outline = exercise("read_outline", lambda: read_outline(name, blob, series, (128, 128)))
    if outline is not None:
        _check_outline(outline, (128, 128), series.slice_count)


# --------------------------------------------------------------------------------- canvas JSON


def _fabric_objects() -> list[dict[str, Any]]:
    """Every object Fabric 7.4 serialised for tests/core/test_roi.py (rects, circles, paths, polygons…)."""
    fixture = json.loads((Path(__file__).parent / "fixtures" / "fabric_geometry.json").read_text())
    return [variant for case in fixture["cases"] for variant in case["variants"].values()]


_FABRIC = _fabric_objects()
_FABRIC_BY_KIND = {kind: [o for o in _FABRIC if o["type"] == kind] for kind in {o["type"] for o in _FABRIC}}
_NUMBER_KEYS = ("left", "top", "width", "height", "angle", "scaleX", "scaleY", "skewX", "skewY", "strokeWidth")
_NUMBER_KEYS += ("rx", "ry", "radius", "startAngle", "endAngle", "minScaleLimit")
_OTHER_KEYS = ("type", "originX", "originY", "points", "path", "pathOffset", "flipX", "fillRule", "visible", "objects")

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from((1e308, -1e308, 5e-324, 1e7, 1e7 + 1, -0.0)),
    st.text(max_size=8),
    st.sampled_from(("center", "left", "bottom", "evenodd", "Polygon", "Path", "Group", "M", "Z")),
)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
)


_PATH_LETTERS = (*"MLHVCSQTAZmlhvcsqtaz", "", "X", "MM")


@st.composite
def hostile_point(draw: st.DrawFn) -> Any:
    """One polygon point as a damaged drawing might hold it: wrong type, hostile numbers, a key missing."""
    how = draw(st.sampled_from(("far", "hostile numbers", "missing key", "not a point")))
    if how == "far":
        return {"x": draw(st.floats(-5000, 5000)), "y": draw(st.floats(-5000, 5000))}
    if how == "hostile numbers":
        return {"x": draw(json_scalar), "y": draw(json_scalar)}
    if how == "missing key":
        return {draw(st.sampled_from(("x", "y", "z"))): draw(st.floats(0, 500))}
    return draw(json_value)


@st.composite
def hostile_command(draw: st.DrawFn) -> Any:
    """One path command: any letter (known, unknown, empty) with any arguments, or not a command at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_value)
    letter = draw(st.sampled_from(_PATH_LETTERS))
    arguments = draw(st.lists(st.floats(-3000, 3000) | json_scalar, max_size=8))
    return [letter, *arguments]


@st.composite
def hostile_object(draw: st.DrawFn) -> Any:
    """A real Fabric object with keys replaced, removed or retyped, points or commands damaged, or nested in groups."""
    kind = draw(st.sampled_from(sorted(_FABRIC_BY_KIND)))  # by kind first: most recorded objects are paths
    obj: Any = copy.deepcopy(draw(st.sampled_from(_FABRIC_BY_KIND[kind])))
    for _ in range(draw(st.integers(1, 4))):
        actions = ["number", "any", "delete"]
        # damage what the object has, most often its geometry
        if isinstance(obj.get("points"), list) and obj["points"]:
            actions += ["points", "points", "points"]
        if isinstance(obj.get("path"), list) and obj["path"]:
            actions += ["path", "path", "path"]
        action = draw(st.sampled_from(actions))
        if action == "number":
            key = draw(st.sampled_from(_NUMBER_KEYS))
            obj[key] = draw(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**9), 10**9))
        elif action == "any":
            obj[draw(st.sampled_from(_NUMBER_KEYS + _OTHER_KEYS))] = draw(json_value)
        elif action == "delete":
            obj.pop(draw(st.sampled_from(sorted(obj))), None)
        elif action == "points":
            index = draw(st.integers(0, len(obj["points"]) - 1))
            obj["points"][index] = draw(hostile_point())
        else:
            index = draw(st.integers(0, len(obj["path"]) - 1))
            obj["path"][index] = draw(hostile_command())
    # one in eight nested in a group (the canvas never sends one); sampled, as integers favour their bounds
    if draw(st.sampled_from((False,) * 7 + (True,))):
        obj = {"type": "Group", "objects": [obj], "left": draw(json_scalar), "scaleX": draw(json_scalar)}
    return obj


@given(data=st.data())
@fuzz_settings(examples=1200)
def test_canvas_json(data: st.DataObject) -> None:
    """mask_from_fabric / outlines_from_fabric on damaged Fabric JSON: RoiError or a mask of the image's shape."""
    rows, cols = data.draw(st.integers(32, 600), label="rows"), data.draw(st.integers(32, 600), label="cols")
    view = CanvasView((rows, cols), (data.draw(st.integers(50, 900)), data.draw(st.integers(50, 900))))
    how = data.draw(st.sampled_from(("objects", "objects", "objects", "any objects", "anything")), label="how")
    if how == "objects":
        drawing = {"objects": data.draw(st.lists(hostile_object(), min_size=1, max_size=3), label="objects")}
    elif how == "any objects":
        drawing = {"objects": data.draw(json_value, label="objects")}
    else:
        drawing = data.draw(json_value, label="drawing")
    outlines = exercise("outlines_from_fabric", lambda: outlines_from_fabric(drawing))
    if outlines is not None:
        for ring in outlines:
            assert ring.dtype == np.float64 and ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 3
            assert np.isfinite(ring).all()
    mask = exercise("mask_from_fabric", lambda: mask_from_fabric(drawing, view))
    if mask is not None:
        assert mask.shape == (rows, cols) and mask.dtype == bool and mask.any()


@given(
    x=st.floats(0, 290),
    y=st.floats(0, 290),
    w=st.floats(4, 250),
    h=st.floats(4, 250),
    scale=st.sampled_from((0.5, 1.0, 1.5, 2.0)),
)
@fuzz_settings(examples=300)
def test_canvas_rectangle_area_is_right(x: float, y: float, w: float, h: float, scale: float) -> None:
    """A rectangle inside the image gives a mask of its area (within a pixel along its edge), where it was drawn."""
    view = CanvasView((300, 300), (round(300 * scale), round(300 * scale)))
    obj = {"type": "Rect", "originX": "left", "originY": "top", "left": x * scale, "top": y * scale}
    obj |= {"width": w * scale, "height": h * scale, "strokeWidth": 0}
    mask = exercise("mask_from_fabric", lambda: mask_from_fabric({"objects": [obj]}, view))
    clipped_w, clipped_h = min(x + w, 300) - x, min(y + h, 300) - y
    assert mask is not None
    assert abs(int(mask.sum()) - clipped_w * clipped_h) <= clipped_w + clipped_h + 1
    rows, cols = np.nonzero(mask)
    assert abs(cols.min() - x) <= 1 and abs(rows.min() - y) <= 1


def _polygon(points: np.ndarray) -> dict[str, Any]:
    return {"type": "Polygon", "points": [{"x": float(px), "y": float(py)} for px, py in points]}


def test_canvas_hostile_drawings_give_a_sentence_or_a_mask() -> None:
    """The issue's list: NaN / inf, far outside, None keys, wrong types, huge scales, nested groups."""
    view = CanvasView((256, 256), (512, 512))
    square = np.array([[100.0, 100.0], [300.0, 100.0], [300.0, 300.0], [100.0, 300.0]])
    refused = [
        {"objects": [_polygon(square) | {"points": [{"x": math.nan, "y": 1}] * 3}]},
        {"objects": [_polygon(square) | {"left": math.inf}]},
        {"objects": [_polygon(square + 1e5)]},  # far outside the image
        {"objects": [_polygon(square) | {"scaleX": 1e7, "scaleY": 1e7}]},
        {"objects": [_polygon(square) | {"scaleX": "2"}]},
        {"objects": [_polygon(square) | {"points": None}]},
        {"objects": "polygon"},
        {"objects": [None]},
        {"objects": [{"type": "Group", "objects": [_polygon(square)]}]},  # the canvas never sends a group
    ]
    for drawing in refused:
        assert exercise("mask_from_fabric", lambda d=drawing: mask_from_fabric(d, view)) is None, drawing
    # a bow tie crosses itself: nonzero and even-odd both fill its two triangles (200 px base, 100 px high),
    # at 2 canvas px per image px
    bow_tie = _polygon(np.array([[100.0, 100.0], [300.0, 300.0], [300.0, 100.0], [100.0, 300.0]]))
    for rule in ("nonzero", "evenodd"):
        mask = mask_from_fabric({"objects": [bow_tie | {"fillRule": rule}]}, view)
        assert abs(int(mask.sum()) - 2 * (200 * 100 / 2) / 2**2) < 200


@pytest.mark.timeout(120)
def test_canvas_million_vertex_outlines_finish_with_a_bounded_answer() -> None:
    """10**6 vertices (freehand path, polygon, or curves that flatten to more): a sentence, in bounded time.

    Just under the caps, 10**5 vertices are filled, and correctly. Times are printed (``-s``),
    not asserted: the timeout marker is the bound.
    """
    view = CanvasView((512, 512), (512, 512))
    theta = np.linspace(0, 2 * math.pi, 10**6, endpoint=False)
    ring = np.stack([256 + 200 * np.cos(theta), 256 + 200 * np.sin(theta)], axis=1)
    path = [["M", *ring[0]], *(["L", float(x), float(y)] for x, y in ring[1:]), ["Z"]]
    # 30,000 wide curves, each flattened to thousands of vertices: over the drawing's vertex budget
    curves = [["M", 0, 0], *(["C", 500, 0, -500, 500, 0, 500] for _ in range(30_000))]
    drawings = {
        "path of 10**6 vertices": {"objects": [{"type": "Path", "path": path}]},
        "polygon of 10**6 vertices": {"objects": [_polygon(ring)]},
        "30,000 curves": {"objects": [{"type": "Path", "path": curves}]},
    }
    small = {"objects": [_polygon(ring[::10])]}
    for name, drawing in drawings.items():
        start = time.perf_counter()
        result = exercise("mask_from_fabric", lambda d=drawing: mask_from_fabric(d, view))
        print(f"{name}: refused in {time.perf_counter() - start:.2f} s")
        assert result is None  # more points than a surgeon draws: one sentence, not minutes of filling
    start = time.perf_counter()
    mask = exercise("mask_from_fabric", lambda: mask_from_fabric(small, view))
    print(f"polygon of 10**5 vertices: filled in {time.perf_counter() - start:.2f} s")
    assert mask is not None and abs(int(mask.sum()) - math.pi * 200**2) < 2 * math.pi * 200


# --------------------------------------------------------------------------------- cohort manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid two-patient phantom cohort (512² DICOM slices and PNG masks) and its manifest."""
    return write_cohort(tmp_path_factory.mktemp("fuzz-cohort"), n_patients=2, seed=3, progress=False)


_MANIFEST_COLUMNS = ("patient_key", "image_path", "mask_path", "early_recurrence", "data_source")
_MANIFEST_COLUMNS += ("n_category", "pixel_spacing_mm", "export_window_level", "export_window_width")
_HOSTILE_CELLS = (
    "", " ", "\0", "nan", "inf", "-1", "1e309", "0", "1", "2", "synthetic", "patients", "N1", "images", ".", "..",
    "/", "x" * 300, "y" * 5000, "a\0b.dcm", "ü.dcm", '"', "\r", "a,b", "images/", "masks", "/etc/hostname",
)  # fmt: skip


@st.composite
def manifest_text(draw: st.DrawFn, rows: list[dict[str, str]], files: Sequence[str]) -> str:
    """A manifest: real columns and rows with cells swapped for hostile text or other files' paths."""
    # the four required columns most of the time, so that some manifests are valid
    columns = list(_MANIFEST_COLUMNS[: draw(st.sampled_from((4, 5, 9, 3)))])
    if draw(st.booleans()):
        columns = draw(st.permutations(columns))
    cells = st.one_of(st.sampled_from(_HOSTILE_CELLS), st.sampled_from(files), st.text(max_size=12))
    out_rows = []
    for _ in range(draw(st.sampled_from((2, 1, 3, 0)))):
        row = dict(draw(st.sampled_from(rows)))
        for column in draw(st.lists(st.sampled_from(columns), max_size=3)):
            row[column] = draw(cells)
        out_rows.append([row.get(column, "") for column in columns])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(out_rows)
    return buffer.getvalue()


@given(data=st.data())
@fuzz_settings(examples=200)
def test_read_manifest(cohort: Path, data: st.DataObject) -> None:
    """read_manifest on hostile manifests (cells, bytes) pointing at real, damaged or missing files."""
    root = cohort.parent
    rows = list(csv.DictReader(cohort.open()))
    (root / "fuzz").mkdir(exist_ok=True)
    damaged_image = root / "fuzz" / "image.dcm"
    damaged_mask = root / "fuzz" / "mask.png"
    image_seed = Seed.dicom("image", (root / rows[0]["image_path"]).read_bytes())
    mask_seed = Seed("mask", (root / rows[0]["mask_path"]).read_bytes(), 64)
    damaged_image.write_bytes(data.draw(mutated([image_seed]), label="image"))
    damaged_mask.write_bytes(data.draw(mutated([mask_seed]), label="mask"))
    files = [r["image_path"] for r in rows] + [r["mask_path"] for r in rows] + ["fuzz/image.dcm", "fuzz/mask.png"]
    if data.draw(st.booleans(), label="bytes"):
        raw = data.draw(mutated([Seed("manifest", cohort.read_bytes(), 80)]), label="manifest bytes")
    else:
        raw = data.draw(manifest_text(rows, files), label="manifest").encode("utf-8", "surrogatepass")
    manifest = root / "fuzz.csv"
    manifest.write_bytes(raw)
    patients = exercise("read_manifest", lambda: read_manifest(manifest))
    if patients is not None:
        assert patients and all(isinstance(p, CohortPatient) for p in patients)
        assert len({p.key for p in patients}) == len(patients) and all(p.label in (0, 1) for p in patients)
        assert all(p.image_path.exists() and p.mask_path.is_file() for p in patients)


def test_manifest_refusal_lists_every_problem(cohort: Path) -> None:
    """A manifest with several bad cells is refused with every problem listed, on one line."""
    manifest = cohort.parent / "two-bad.csv"
    manifest.write_text("patient_key,image_path,mask_path,early_recurrence\nA,nope.dcm,nope.png,3\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    assert len(caught.value.problems) == 3 and "\n" not in str(caught.value)
