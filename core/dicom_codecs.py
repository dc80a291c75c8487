"""Which DICOM transfer syntaxes this tool decodes, with which plugin, and whether they are lossy.

pydicom decodes native (uncompressed, deflated) data itself and RLE with its own
decoder (``pylibjpeg-rle`` is used when installed, for speed). Compressed pixel data
goes to plugins whose licences suit an MIT/BSD/Apache release:

============================  ===============================  =====================
transfer syntax               decoder (licence)                lossless?
============================  ===============================  =====================
RLE Lossless                  pydicom / pylibjpeg-rle (MIT)    yes
JPEG Baseline (8-bit)         Pillow (MIT-CMU)                 no (always lossy)
JPEG Extended (12-bit)        imagecodecs (BSD-3), here        no (always lossy)
JPEG Lossless (P14, SV1)      imagecodecs (BSD-3), here        yes
JPEG-LS Lossless / Near-L.    pyjpegls / CharLS (MIT / BSD-3)  yes / within ±NEAR
JPEG 2000 (Lossless) / HTJ2K  pylibjpeg-openjpeg (MIT)         either: see header
============================  ===============================  =====================

``imagecodecs`` (libjpeg-turbo 3, which reads 8/12-bit DCT and 2–16-bit lossless JPEG)
is registered here as a pydicom decoder plugin because pydicom ships no plugin for
12-bit or lossless JPEG other than GDCM and the GPLv3 ``pylibjpeg-libjpeg``; the
``python-gdcm`` wheel on PyPI cannot read 12-bit JPEG either.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pydicom
from pydicom import uid as uids
from pydicom.pixels import get_decoder

# ------------------------------------------------------------- the imagecodecs plugin (pydicom API)

_IMAGECODECS_SYNTAXES = (
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
)
#: pydicom's plugin protocol: what the plugin needs, per transfer syntax.
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1.1",) for syntax in _IMAGECODECS_SYNTAXES}
_PLUGIN_LABEL = "imagecodecs"


def is_available(uid: str) -> bool:
    """pydicom's plugin protocol: ``True`` when imagecodecs is installed and handles ``uid``."""
    return uid in DECODER_DEPENDENCIES and importlib.util.find_spec("imagecodecs") is not None


def _decode_frame(src: bytes, runner: object) -> bytes:
    """pydicom's plugin protocol: one JPEG frame → native little-endian pixel bytes.

    libjpeg-turbo returns the samples as unsigned (uint8 ≤ 8 bits, uint16 above); pydicom
    then reinterprets them per PixelRepresentation and clears unused high bits, which
    sign-extends signed data (``correct_unused_bits``).
    """
    import imagecodecs
    import numpy as np

    if getattr(runner, "samples_per_pixel", 1) != 1:
        raise NotImplementedError("the imagecodecs plugin here decodes greyscale JPEG only")
    decoded = imagecodecs.jpeg8_decode(src)
    bits_allocated = int(getattr(runner, "bits_allocated", 16))
    dtype = {8: np.uint8, 16: np.dtype("<u2")}.get(bits_allocated)
    if dtype is None:
        raise NotImplementedError(f"JPEG frames with {bits_allocated} bits allocated")
    return np.ascontiguousarray(decoded).astype(dtype, copy=False).tobytes()


_registered = False


def register_decoders() -> None:
    """Add the imagecodecs plugin to pydicom's JPEG decoders (idempotent, import-time safe)."""
    global _registered
    if _registered:
        return
    for syntax in _IMAGECODECS_SYNTAXES:
        decoder = get_decoder(syntax)
        if decoder is None or _PLUGIN_LABEL in decoder._available or _PLUGIN_LABEL in decoder._unavailable:
            continue
        decoder.add_plugin(_PLUGIN_LABEL, (__name__, "_decode_frame"))
    _registered = True


# ------------------------------------------------------------- what a syntax is, in words


@dataclass(frozen=True)
class Compression:
    """How a file's pixel data is stored.

    Attributes:
        uid: the transfer syntax UID.
        name: the compression in words, as a surgeon's PACS shows it ("JPEG 2000", "uncompressed").
        lossy: ``True`` when the syntax always discards information (JPEG Baseline / Extended),
            ``None`` when it may or may not (JPEG-LS near-lossless, JPEG 2000, HTJ2K: the
            header's LossyImageCompression says), ``False`` when it never does.
        decodable: a decoder for it is installed.
    """

    uid: str
    name: str
    lossy: bool | None
    decodable: bool


_NAMES: dict[str, tuple[str, bool | None]] = {
    uids.ImplicitVRLittleEndian: ("uncompressed (implicit VR little endian)", False),
    uids.ExplicitVRLittleEndian: ("uncompressed (explicit VR little endian)", False),
    uids.ExplicitVRBigEndian: ("uncompressed (explicit VR big endian)", False),
    uids.DeflatedExplicitVRLittleEndian: ("deflated (zip-compressed header and pixels)", False),
    uids.RLELossless: ("RLE lossless", False),
    uids.JPEGBaseline8Bit: ("JPEG Baseline (8-bit, lossy)", True),
    uids.JPEGExtended12Bit: ("JPEG Extended (12-bit, lossy)", True),
    uids.JPEGLossless: ("JPEG Lossless (process 14)", False),
    uids.JPEGLosslessSV1: ("JPEG Lossless (process 14, selection value 1)", False),
    uids.JPEGLSLossless: ("JPEG-LS lossless", False),
    uids.JPEGLSNearLossless: ("JPEG-LS near-lossless", None),
    uids.JPEG2000Lossless: ("JPEG 2000 lossless", False),
    uids.JPEG2000: ("JPEG 2000", None),
    uids.HTJ2KLossless: ("High-Throughput JPEG 2000 lossless", False),
    uids.HTJ2KLosslessRPCL: ("High-Throughput JPEG 2000 lossless (RPCL)", False),
    uids.HTJ2K: ("High-Throughput JPEG 2000", None),
}


def compression_of(ds: pydicom.Dataset) -> Compression:
    """The compression of a parsed dataset's pixel data (header only; nothing is decoded).

    A missing transfer syntax is read as pydicom reads such files: implicit VR little endian.
    """
    register_decoders()
    meta = getattr(ds, "file_meta", None)
    raw = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    syntax = uids.UID(raw or uids.ImplicitVRLittleEndian)
    known = _NAMES.get(syntax)
    if known is None:
        label = syntax.name if syntax.is_valid and syntax.name != syntax else f"unknown ({_short(raw)})"
        return Compression(uid=str(syntax), name=label, lossy=None, decodable=_decodable(syntax))
    name, lossy = known
    return Compression(uid=str(syntax), name=name, lossy=lossy, decodable=_decodable(syntax))


def _decodable(syntax: uids.UID) -> bool:
    if syntax in _NAMES and not syntax.is_encapsulated:
        return True
    try:
        decoder = get_decoder(syntax)
    except Exception:  # pydicom raises for syntaxes it has never heard of
        return False
    return bool(decoder is not None and decoder.is_available)


def lossy_reason(ds: pydicom.Dataset) -> str | None:
    """Why this image's HU are approximate (lossy compression now or earlier), or ``None``.

    Evidence, in order: LossyImageCompression "01" (this or an earlier step was lossy,
    PS3.3 C.7.6.1.1.5), the transfer syntax (JPEG Baseline / Extended are always lossy),
    and for syntaxes that may be either (JPEG-LS near-lossless, JPEG 2000) the absence of
    LossyImageCompression "00" — a lossy encoder must write "01", so a missing flag on such a
    syntax is treated as lossy to be safe.
    """
    flag = str(ds.get("LossyImageCompression", "") or "").strip()
    compression = compression_of(ds)
    if compression.lossy is True:
        return compression.name
    if flag == "01":
        method = str(ds.get("LossyImageCompressionMethod", "") or "").strip()
        if compression.lossy is None:
            return f"{compression.name} (lossy)"
        return f"lossy compression{f' ({_short(method)})' if method else ''} applied before this file was written"
    if compression.lossy is None and flag != "00":
        return f"{compression.name}, which may be lossy"
    return None


def undecodable_message(compression: Compression) -> str:
    """The sentence for pixel data whose compression no installed decoder reads."""
    return (
        f"This CT file is compressed with {compression.name}, which this installation cannot decode; "
        "export the series uncompressed or with JPEG 2000 / JPEG-LS / JPEG Lossless from the PACS."
    )


def _short(text: str, limit: int = 40) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decode_failed(error: BaseException) -> bool:
    """Whether ``error``, raised while decoding pixel data, is the decoder refusing damaged data.

    ``except Exception`` is not enough: the Rust decoders (``pylibjpeg-rle``) turn a panic on
    data they did not expect into pyo3's ``PanicException``, which derives from
    :class:`BaseException` (an out-of-bounds index in a cut-short RLE segment does this).
    Interrupts and exits are not decoder failures.
    """
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"
