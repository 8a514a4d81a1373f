"""Shared pytest fixtures.

- ``make_video(**kw) -> str``: path of a synthetic video from
  :func:`videos.write_test_video` (same keywords, plus ``ext="mp4"``), encoded
  once per session and cached by its parameters. Frame ``i`` shows ``i`` as a
  bit code: ``videos.decode_index(frame) == i``.
- ``video_dir``: a session-wide temporary folder for generated media.
- ``shared_clips``: ``pathlib.Path`` of the real clips in ``../shared/clips``
  (skips the test, saying why, when the folder is absent).

The ``tests/`` folder is put on ``sys.path`` so tests can ``from videos import ...``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from videos import write_test_video  # noqa: E402

SHARED_CLIPS = TESTS_DIR.parent.parent / "shared" / "clips"


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-scoped temporary folder for generated videos."""
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def make_video(video_dir: Path) -> Callable[..., str]:
    """Factory: ``make_video(num_frames=60, fps=30, width=160, height=120, ext="mp4", ...) -> path``."""
    cache: dict[tuple, str] = {}

    def _make(ext: str = "mp4", **kw: Any) -> str:
        key = (ext, tuple(sorted(kw.items())))
        if key not in cache:
            name = "v_" + "_".join(f"{k}-{v}" for k, v in sorted(kw.items())) + f".{ext}"
            cache[key] = write_test_video(video_dir / name, **kw)
        return cache[key]

    return _make


@pytest.fixture(scope="session")
def shared_clips() -> Path:
    """Folder of the real test clips (``../shared/clips``); skips when it is missing."""
    if not SHARED_CLIPS.is_dir():
        pytest.skip(f"real clips folder {SHARED_CLIPS} not present (see DESIGN.md: ../shared/clips)")
    return SHARED_CLIPS
