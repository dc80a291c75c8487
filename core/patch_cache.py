"""Never score the same patch twice: a bounded, process-wide LRU of patch probabilities.

A patch's probability is a function of the slice's pixels and spacing, the model's
preprocessing, its weights (one ensemble member) and the engine that ran it, and the
patch's lattice cell (:mod:`core.lattice`). The cache key is exactly that:

    (slice digest, preprocessing digest, model id, member index, engine name, i, j)

* The slice digest is our own sha256 of the pixel bytes, shape, dtype and spacing: Streamlit's
  hashing samples arrays of 500,000 elements or more and would confuse two slices.
* The model id is the checkpoint's sha256 when it came from a file; a model built in memory
  gets an id of its own instance, so two fake predictors never share entries.
* The engine name is in the key because engines may differ by up to the verified tolerance
  (0.02); one case's patches are then never a mix of two engines' answers.

Each entry is one float (about 200 bytes with its key), so the default bound of 200,000
entries holds some 40 MB: about 130 large (1,500-patch) cases of a five-model ensemble.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from core.preprocess import PreprocessConfig

DEFAULT_MAX_ENTRIES = 200_000


def slice_digest(pixels: np.ndarray, spacing_mm: tuple[float, float] | None) -> str:
    """sha256 of a slice's pixel content (bytes, shape, dtype) and its spacing in mm."""
    digest = hashlib.sha256()
    array = np.ascontiguousarray(pixels)
    digest.update(f"{array.dtype.str}|{array.shape}|{spacing_mm!r}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def preprocess_digest(cfg: PreprocessConfig) -> str:
    """sha256 of the preprocessing settings (they decide what a patch's pixels are)."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    """Lookups since the cache was made (or :meth:`PatchCache.clear`): hits, misses and entries held."""

    hits: int
    misses: int
    entries: int
    max_entries: int


class PatchCache:
    """A thread-safe least-recently-used map from patch keys to probabilities.

    Args:
        max_entries: bound on the number of probabilities held; the least recently used go first.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def lookup(self, keys: Sequence[Hashable]) -> np.ndarray:
        """(N,) float64 probabilities, NaN where a key is not held; counts hits and misses."""
        out = np.full(len(keys), np.nan, dtype=np.float64)
        with self._lock:
            for index, key in enumerate(keys):
                value = self._entries.get(key)
                if value is None:
                    self._misses += 1
                    continue
                self._entries.move_to_end(key)
                out[index] = value
                self._hits += 1
        return out

    def store(self, keys: Iterable[Hashable], values: Iterable[float]) -> None:
        """Hold these probabilities, evicting the least recently used beyond ``max_entries``."""
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                self._entries[key] = float(value)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self.max_entries)

    def clear(self) -> None:
        """Forget every entry and reset the counts."""
        with self._lock:
            self._entries.clear()
            self._hits = self._misses = 0

    def __len__(self) -> int:
        return len(self._entries)


# The process-wide cache: every Streamlit session of one server shares it.
PATCH_CACHE = PatchCache()
