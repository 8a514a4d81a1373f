"""videoapp.files: atomic writes leave the old file or the new one, never a half-written one or a temp."""
from __future__ import annotations

import pytest

from videoapp.files import atomic_path, atomic_write_bytes, atomic_write_text, first_line, save_png


def test_atomic_writes_replace_and_leave_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    atomic_write_text(target, "old\n")
    assert atomic_write_text(target, "a,b\r\nc,d\r\n", newline="") == target
    assert target.read_bytes() == b"a,b\r\nc,d\r\n"  # newline="" keeps what was written
    assert atomic_write_bytes(tmp_path / "x.bin", b"\x00\xff") == tmp_path / "x.bin"
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "x.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name == "report.json.tmp"
            tmp.write_text('{"half": ')
            raise RuntimeError("disk full")
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_keep_suffix_temporary_and_png(tmp_path):
    with atomic_path(tmp_path / "plot.png", keep_suffix=True) as tmp:
        assert tmp.name == "plot.tmp.png"
        tmp.write_bytes(b"x")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    out = save_png(fig, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)  # closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_first_line():
    assert first_line(ValueError("  bad header\nTraceback details\n")) == "bad header"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("")) == "OSError"
