from __future__ import annotations

from pathlib import Path

import pytest

from core.files import beside, replaced_on_success


def test_the_new_content_takes_the_place_of_the_old_only_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with replaced_on_success(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old" and tmp == beside(target)
    assert target.read_text() == "new" and not beside(target).exists()


def test_a_block_that_fails_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), replaced_on_success(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
