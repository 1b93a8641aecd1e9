"""Run files written by labpgt 0.1.0 (before the "One house" restructuring) still open,
inspect, report and replay bit for bit. The files under tests/data/ were made with the code as
it was at commit b64eeb2 and must never be regenerated."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labpgt.cli import main

DATA = Path(__file__).parent / "data"
OLD_FILES = sorted(DATA.glob("v010-*.h5"))


def test_the_old_files_are_there():
    names = {p.name for p in OLD_FILES}
    assert {"v010-dense-node.h5", "v010-dense-spsa.h5", "v010-transformer-pgt.h5"} <= names


@pytest.mark.parametrize("path", OLD_FILES, ids=lambda p: p.stem)
def test_an_old_run_file_inspects_reports_and_replays_bit_for_bit(path, tmp_path, capsys):
    copy = tmp_path / path.name  # never touch the committed file
    shutil.copy(path, copy)
    before = copy.read_bytes()
    assert main(["inspect", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "status: completed" in out and "format: labpgt-run version 1" in out
    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 0
    pngs = list((tmp_path / "report").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    capsys.readouterr()
    assert main(["replay", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "replay matches" in out and "bit for bit" in out
    assert copy.read_bytes() == before  # reading never writes
