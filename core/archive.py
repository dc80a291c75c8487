"""Turn an upload — many files, a folder, or one ZIP — into named in-memory files, refusing
what is too much or unsafe before anything is decompressed or decoded.

Checks, in order, each with its own sentence (:class:`~core.errors.UploadRefusedError`):

1. number of files (a folder upload) or ZIP entries > :data:`~core.limits.MAX_FILES`;
2. a ZIP entry with an absolute path, a drive letter or a ``..`` component (zip-slip), or a
   symbolic link — refused although nothing is ever written to disk, because such an
   archive was not made by a PACS export;
3. an encrypted entry;
4. declared total size (files, or ZIP entries uncompressed) > :data:`~core.limits.MAX_TOTAL_BYTES`;
5. while expanding, an entry that does not match its header (a zip bomb lying about its size):
   :mod:`zipfile` never inflates past the declared size and then fails the CRC check, which is
   refused as a damaged entry; reading asks for at most the declared size + 1 byte regardless.

ZIP metadata (names, sizes, flags) is read from the central directory first; no entry is
decompressed until every entry has passed 1–4.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import UploadRefusedError
from core.limits import MAX_FILES, MAX_TOTAL_BYTES, MAX_UPLOAD_MB

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive's end record
# Files that come with archives made on macOS or Windows and are never images.
_JUNK = re.compile(r"(^|/)(__MACOSX/|\._|\.DS_Store$|Thumbs\.db$|desktop\.ini$)", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")
# What reading a damaged ZIP raises: zipfile's own errors (an entry claiming an unknown zip
# version is a NotImplementedError), and those of the decompressors it drives (a corrupt deflate
# stream is a zlib.error, a corrupt LZMA one an LZMAError).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
)


@dataclass(frozen=True)
class UploadedFile:
    """One file of an upload, in memory.

    Attributes:
        name: its path inside the upload ("series1/IM0001"); shown to the user, never opened.
        data: its bytes.
    """

    name: str
    data: bytes


def is_zip(data: bytes) -> bool:
    """The bytes start like a ZIP archive."""
    return data[:4] in ZIP_MAGIC


def unpack_upload(files: Sequence[tuple[str, bytes]]) -> list[UploadedFile]:
    """The files of an upload: one ZIP is expanded, anything else is taken as it is.

    Args:
        files: (name, bytes) pairs as uploaded — one ZIP, or any number of files (a folder upload).
            A ZIP among several files is not opened (listed later as not an image).

    Returns:
        The files, in upload order (ZIP: archive order), junk (``__MACOSX/``, ``.DS_Store``) and
        empty files dropped.

    Raises:
        UploadRefusedError: nothing uploaded, too many files, too many bytes, or an unsafe ZIP.
    """
    if not files:
        raise UploadRefusedError("Nothing was uploaded; choose a folder, several DICOM files or one ZIP.")
    if len(files) == 1 and is_zip(files[0][1]):
        return unpack_zip(files[0][1])
    check_file_count(len(files), "The upload holds")
    total = sum(len(data) for _, data in files)
    check_total_bytes(total, "The upload holds")
    for name, data in files:
        if len(data) > MAX_UPLOAD_MB * 1024**2:
            raise UploadRefusedError(
                f"The file {_shown(name)} is {_mb(len(data))}, more than the {MAX_UPLOAD_MB} MB allowed for one file; "
                "export one series."
            )
    return [UploadedFile(name, data) for name, data in files if data and not _JUNK.search(name.replace("\\", "/"))]


def unpack_zip(data: bytes) -> list[UploadedFile]:
    """Expand one ZIP in memory after checking every entry's header (see the module's list).

    Raises:
        UploadRefusedError: damaged, too many entries, unsafe or encrypted entries, too large.
    """
    if len(data) > MAX_UPLOAD_MB * 1024**2:
        raise UploadRefusedError(
            f"The ZIP is {_mb(len(data))}, more than the {MAX_UPLOAD_MB} MB allowed; export one series."
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except _ZIP_ERRORS as exc:
        raise UploadRefusedError("The ZIP file is damaged or incomplete; export it again from the PACS.") from exc
    check_file_count(len(entries), "The ZIP holds")
    for entry in entries:
        problem = unsafe_entry_problem(entry)
        if problem:
            raise UploadRefusedError(
                f"The ZIP contains an entry with {problem} ({_shown(entry.filename)}), so it was not opened; "
                "export the images again from the PACS."
            )
        if entry.flag_bits & 0x1:
            raise UploadRefusedError(
                f"The ZIP's entry {_shown(entry.filename)} is password-protected; export the images without a password."
            )
    check_total_bytes(sum(entry.file_size for entry in entries), "The ZIP expands to")
    out: list[UploadedFile] = []
    for entry in entries:
        if entry.is_dir() or _JUNK.search(entry.filename):
            continue
        try:
            with archive.open(entry) as handle:
                content = handle.read(entry.file_size + 1)  # never more than declared (+1 to notice a lie)
        except _ZIP_ERRORS as exc:
            raise UploadRefusedError(
                f"The ZIP's entry {_shown(entry.filename)} is damaged or uses an unsupported compression; "
                "export the ZIP again from the PACS."
            ) from exc
        if len(content) > entry.file_size:
            raise UploadRefusedError(
                f"The ZIP's entry {_shown(entry.filename)} expands past the size its header declares, "
                "as a zip bomb does, so the ZIP was not opened."
            )
        if content:
            out.append(UploadedFile(entry.filename, content))
    return out


def unsafe_entry_problem(entry: zipfile.ZipInfo) -> str | None:
    """Why a ZIP entry's path is unsafe ("an absolute path", "a '..' path", "a symbolic link"), or ``None``."""
    name = entry.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' path"
    if "\0" in name:
        return "a path holding a NUL character"
    mode = entry.external_attr >> 16
    if entry.create_system == 3 and stat.S_ISLNK(mode):  # made on Unix, and a link
        return "a symbolic link"
    return None


def check_file_count(count: int, what: str) -> None:
    """Refuse more than :data:`~core.limits.MAX_FILES` files; ``what`` starts the sentence ("The ZIP holds")."""
    if count > MAX_FILES:
        raise UploadRefusedError(
            f"{what} {count} files, more than the {MAX_FILES} this tool reads at once; upload one series or study."
        )


def check_total_bytes(total: int, what: str) -> None:
    """Refuse more than :data:`~core.limits.MAX_TOTAL_BYTES` bytes; ``what`` starts the sentence."""
    if total > MAX_TOTAL_BYTES:
        raise UploadRefusedError(
            f"{what} {_mb(total)}, more than the {_mb(MAX_TOTAL_BYTES)} this tool reads at once; "
            "upload one series or study."
        )


def _mb(size: int) -> str:
    return f"{size / 1024**2:,.0f} MB"


def _shown(name: str, limit: int = 60) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in name)
    text = text if len(text) <= limit else "…" + text[-(limit - 1) :]
    return f"'{text}'"
