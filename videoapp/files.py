"""Small file helpers shared by every layer: atomic writes and one-line error messages.

This module sits at the bottom of the package's layers: it imports no other
``videoapp`` module, so anything may use it.

An atomic write goes to a temporary file beside its target (same directory,
so the final ``os.replace`` is a rename on one file system) and is renamed
into place only once complete: a reader never sees a half-written file, and a
failed write leaves the old file (if any) untouched and no temporary behind.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto ``path`` when the block ends without error.

    For writers that need a file name (safetensors, ``savefig``, ``onnx.save``, PyAV).
    The temporary is ``NAME.tmp``, or ``STEM.tmp.SUFFIX`` with ``keep_suffix`` (for
    writers that pick the format from the extension). If the block raises, the
    temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}" if keep_suffix else f"{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (see the module docstring); returns ``path``.

    ``newline`` is passed to ``open`` (``""`` keeps ``\\r\\n`` as written, e.g. for csv).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline=newline) as f:
            f.write(text)
    return path


def save_png(fig: Any, path: str | os.PathLike, *, dpi: int = 90) -> Path:
    """Save a Matplotlib figure as a PNG at ``path`` atomically, close it, and return ``path``.

    The figure is closed even when saving fails, so pyplot never accumulates open figures.
    """
    import matplotlib.pyplot as plt  # only the plotting writers need it

    path = Path(path)
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def first_line(exc: BaseException | object) -> str:
    """The first line of ``str(exc)`` (its type name when empty): one-line error messages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
