"""Writing files so that a reader, or a run stopped half-way, never finds half of one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def beside(path: Path) -> Path:
    """Where :func:`replaced_on_success` writes ``path``'s new content before it takes its place."""
    return path.with_name(path.name + ".tmp")


@contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """A path to write ``path``'s new content to; it replaces ``path`` in one step when the block ends.

    A block that raises, or a process stopped mid-write, leaves ``path`` as it was (or absent)
    and what was written so far in :func:`beside` it, which the next write overwrites.
    """
    tmp = beside(path)
    yield tmp
    os.replace(tmp, path)
