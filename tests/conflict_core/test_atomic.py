from __future__ import annotations

import os
import stat
from pathlib import Path

from conflict_core.atomic import write_text_atomically


def test_replaces_the_text_keeps_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "serve_config.yaml"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["serve_config.yaml"]


def test_a_new_file_gets_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    write_text_atomically(tmp_path / "LATEST", "snapshot")
    assert (tmp_path / "LATEST").read_text() == "snapshot"
    assert stat.S_IMODE((tmp_path / "LATEST").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
