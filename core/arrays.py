"""Numpy arrays ↔ compressed bytes, for storage in the database.

Uses ``np.savez_compressed`` with ``allow_pickle=False`` on load, so stored bytes
can never execute code.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np


def pack(array: np.ndarray) -> bytes:
    """Compress one array (any shape, numeric or bool dtype) to bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=np.ascontiguousarray(array))
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["a"]


def checksum(data: bytes) -> str:
    """The sha256 (hex) of packed bytes; stored beside them and checked on every load."""
    return hashlib.sha256(data).hexdigest()
