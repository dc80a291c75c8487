"""Upload caps and ZIP safety (core.limits, core.archive): each refusal with its sentence."""

from __future__ import annotations

import io
import stat
import tomllib
import zipfile
from pathlib import Path

import pytest

import core.archive as archive
from core.archive import unpack_upload, unpack_zip
from core.errors import UploadRefusedError
from core.limits import MAX_FILES, MAX_UPLOAD_MB
from tests.core.ct_series import zip_of

ROOT = Path(__file__).resolve().parents[2]


def _one_sentence(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith(".") and message[0].isupper()
    return message


def test_streamlit_upload_cap_matches_core() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB


def test_files_are_taken_as_they_are_and_junk_is_dropped() -> None:
    files = unpack_upload([("a/IM1", b"one"), ("__MACOSX/._IM1", b"junk"), ("a/.DS_Store", b"x"), ("empty", b"")])
    assert [(f.name, f.data) for f in files] == [("a/IM1", b"one")]


def test_one_zip_is_expanded() -> None:
    files = unpack_upload([("study.zip", zip_of([("s1/IM1", b"one"), ("s1/IM2", b"two"), ("__MACOSX/._IM1", b"j")]))])
    assert [(f.name, f.data) for f in files] == [("s1/IM1", b"one"), ("s1/IM2", b"two")]


def test_nothing_uploaded() -> None:
    with pytest.raises(UploadRefusedError) as caught:
        unpack_upload([])
    assert _one_sentence(caught) == "Nothing was uploaded; choose a folder, several DICOM files or one ZIP."


def test_too_many_files_in_a_folder_upload() -> None:
    with pytest.raises(UploadRefusedError) as caught:
        unpack_upload([(f"IM{i}", b"x") for i in range(MAX_FILES + 1)])
    assert _one_sentence(caught) == (
        f"The upload holds {MAX_FILES + 1} files, more than the {MAX_FILES} this tool reads at once; "
        "upload one series or study."
    )


def test_too_many_zip_entries_refused_before_any_is_read() -> None:
    data = zip_of([(f"IM{i}", b"") for i in range(MAX_FILES + 1)], compression=zipfile.ZIP_STORED)
    with pytest.raises(UploadRefusedError) as caught:
        unpack_zip(data)
    assert _one_sentence(caught).startswith(f"The ZIP holds {MAX_FILES + 1} files, more than the {MAX_FILES}")


def test_zip_expanding_past_the_cap_is_refused_from_its_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 1024**2)
    data = zip_of([("zeros.dcm", b"\0" * (3 * 1024**2))])  # 3 MB of zeros deflate to a few kB
    assert len(data) < 20_000
    opened: list[str] = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: opened.append("x"))  # must not be reached
    with pytest.raises(UploadRefusedError) as caught:
        unpack_zip(data)
    assert _one_sentence(caught) == (
        "The ZIP expands to 3 MB, more than the 1 MB this tool reads at once; upload one series or study."
    )
    assert opened == []


def test_folder_upload_past_the_total_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 1024**2)
    with pytest.raises(UploadRefusedError) as caught:
        unpack_upload([("a", b"\0" * 700_000), ("b", b"\0" * 700_000)])
    assert "The upload holds 1 MB, more than the 1 MB" in _one_sentence(caught)


def test_single_file_past_the_per_file_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_UPLOAD_MB", 1)
    with pytest.raises(UploadRefusedError) as caught:
        unpack_upload([("big.dcm", b"\0" * (2 * 1024**2)), ("b", b"x")])
    assert _one_sentence(caught) == (
        "The file 'big.dcm' is 2 MB, more than the 1 MB allowed for one file; export one series."
    )


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../etc/cron.d/evil", "a '..' path"),
        ("series/../../evil.dcm", "a '..' path"),
        ("/etc/passwd", "an absolute path"),
        ("C:/Windows/evil.dcm", "an absolute path"),
        ("\\\\server\\share\\evil.dcm", "an absolute path"),
    ],
)
def test_zip_slip_entries_are_refused(name: str, problem: str) -> None:
    data = zip_of([("ok/IM1", b"fine"), (name, b"evil")])
    with pytest.raises(UploadRefusedError) as caught:
        unpack_upload([("export.zip", data)])
    message = _one_sentence(caught)
    assert message.startswith(f"The ZIP contains an entry with {problem} (")
    assert message.endswith("), so it was not opened; export the images again from the PACS.")


def test_symbolic_link_entry_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        info = zipfile.ZipInfo("series/link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(UploadRefusedError) as caught:
        unpack_zip(buffer.getvalue())
    assert "an entry with a symbolic link ('series/link')" in _one_sentence(caught)


def test_encrypted_entry_is_refused() -> None:
    data = bytearray(zip_of([("IM1", b"secret")], compression=zipfile.ZIP_STORED))
    # set the "encrypted" flag in the local header (offset 6) and the central directory entry (offset 8)
    data[6] |= 1
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 1
    with pytest.raises(UploadRefusedError) as caught:
        unpack_zip(bytes(data))
    assert _one_sentence(caught) == (
        "The ZIP's entry 'IM1' is password-protected; export the images without a password."
    )


def test_entry_lying_about_its_size_is_refused() -> None:
    payload = b"A" * 10_000
    data = bytearray(zip_of([("IM1", payload)]))
    # declare 100 bytes uncompressed in both headers: a bomb that lies in its directory
    local_size, central = 22, data.index(b"PK\x01\x02")
    data[local_size : local_size + 4] = (100).to_bytes(4, "little")
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")
    with pytest.raises(UploadRefusedError) as caught:
        unpack_zip(bytes(data))
    assert _one_sentence(caught).startswith("The ZIP's entry 'IM1' is damaged")


def test_damaged_zip() -> None:
    data = zip_of([("IM1", b"x" * 1000)])
    with pytest.raises(UploadRefusedError) as caught:
        unpack_upload([("cut.zip", data[:40])])
    assert _one_sentence(caught) == "The ZIP file is damaged or incomplete; export it again from the PACS."
