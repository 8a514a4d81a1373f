"""Helpers every page of the UI shares: the error type, Markdown escaping, constants."""
from __future__ import annotations

import html
import logging
from typing import Any

from videoapp.files import first_line

logger = logging.getLogger("videoapp")

MODEL_LABEL_SET = "model"  # value of the "labels of the selected model" entry in the label-set list
BROWSER_VIDEO_EXTS = (".mp4", ".webm", ".ogg")
_MAX_ZIP_MEMBERS = 10000


class UIError(Exception):
    """A request from the page that cannot be carried out; ``str()`` is the message shown."""


def _esc(text: Any) -> str:
    """Text safe inside Markdown/HTML (user-supplied names, labels)."""
    out = html.escape(str(text), quote=False)
    for ch in "\\`*_[]|~#":
        out = out.replace(ch, "\\" + ch)
    return out


def _n(count: int, word: str) -> str:
    """``"1 label"``, ``"2 labels"``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _first_line(exc: BaseException) -> str:
    """``first_line(exc)`` cut to 300 characters, so a page never shows a wall of text."""
    return first_line(exc)[:300]
