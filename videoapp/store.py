"""Label store: uploaded clips and their labels in a data directory (SQLite in WAL mode).

Layout of a data directory (``videoapp serve --data-dir DIR``; default
:func:`default_data_dir`)::

    DIR/labels.db            SQLite database (WAL journal: labels.db-wal, labels.db-shm)
    DIR/clips/ab/<sha256>.mp4  uploaded clips, content-addressed (the first two hex digits fan out)
    DIR/exports/<stamp>/     exports (Kinetics CSV + clips, class-per-folder trees)
    DIR/models/              weights fine-tuned on the labels (see videoapp.ui.finetune)
    DIR/tmp/                 uploads being checked (removed when done)

Clips are stored by the SHA-256 of their bytes: the same video uploaded twice is
one clip, and an uploaded file's name is kept only as text (``original_name``),
never used to build a path. A file is accepted only when it decodes
(:class:`~videoapp.data.video.VideoReader` opens it and returns its first and
last frames); anything else raises :class:`UploadRefused` and leaves nothing
behind.

Tables: ``clips`` (one row per stored video, with its metadata), ``labels``
(one row per labelling act: clip, label, optional segment ``start_s``/``end_s``,
``source`` "model" or "person", who, when, model score) and ``label_sets``
(named lists of class names). Labels are never updated in place: saving a label
adds a row, and a clip's *current* label is its newest person label (else its
newest model suggestion), so two browser sessions that label at the same time
both keep their rows and the later commit wins. Every write is one
transaction (``BEGIN IMMEDIATE``; ``synchronous=FULL``), so a process killed at
any instant leaves every committed label in place and the database readable.

Exports: Kinetics-style CSV (``label,youtube_id,time_start,time_end,split`` plus
``sha256,start_s,end_s,source,labeled_by,labeled_at``) with the clips cut to their
segments and named ``<youtube_id>_<start:06d>_<end:06d>.mp4`` (what
:func:`videoapp.data.datasets.read_kinetics_csv` looks for), and class-per-folder
trees (``<label>/<clip>.mp4``, what :func:`videoapp.data.datasets.read_folder`
reads). Both import back (:meth:`LabelStore.import_kinetics_csv`,
:meth:`LabelStore.import_folder`); clips exported whole are byte copies, so they
keep their SHA-256 through the round trip.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

logger = logging.getLogger("videoapp")

DB_NAME = "labels.db"
SOURCES = ("model", "person")
# Extensions we keep for stored clips (from the uploaded name, lower-cased); anything else is stored as .video.
CLIP_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
EXTRA_COLUMNS = ("sha256", "start_s", "end_s", "source", "labeled_by", "labeled_at")
MAX_LABEL_LEN = 100
_COPY_CHUNK = 1 << 20
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    ext TEXT NOT NULL,
    original_name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    num_frames INTEGER NOT NULL,
    fps REAL NOT NULL,
    duration_s REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    codec TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id INTEGER NOT NULL REFERENCES clips(id),
    label TEXT NOT NULL,
    start_s REAL,
    end_s REAL,
    source TEXT NOT NULL CHECK (source IN ('model', 'person')),
    labeled_by TEXT NOT NULL,
    labeled_at TEXT NOT NULL,
    score REAL,
    model TEXT,
    label_set TEXT
);
CREATE INDEX IF NOT EXISTS labels_clip ON labels (clip_id, source, id);
CREATE TABLE IF NOT EXISTS label_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    source TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """A request the store cannot carry out (bad label, unknown clip, unreadable CSV); ``str()`` is one line."""


class UploadRefused(StoreError):
    """An uploaded file that is not stored: not a decodable video, or over the size limit."""


def default_data_dir() -> Path:
    """``$VIDEOAPP_DATA_DIR``, else ``$XDG_DATA_HOME/videoapp``, else ``~/.local/share/videoapp``."""
    env = os.environ.get("VIDEOAPP_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "videoapp"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds (``2025-01-31T12:00:00.000+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def display_name(name: str | None, default: str = "upload") -> str:
    """A file name fit to show and store as text: last path component, no control characters, <= 120 chars."""
    if not name:
        return default
    base = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if base in ("", ".", ".."):
        return default
    return base[:120]


def check_label(label: Any) -> str:
    """A label name as stored: stripped text of 1..100 characters without slashes or control characters.

    Labels become folder names in class-per-folder exports, so they can never be
    ``.``/``..`` or contain a path separator. Raises :class:`StoreError`.
    """
    if not isinstance(label, str):
        raise StoreError(f"a label must be text, got {type(label).__name__}")
    text = label.strip()
    if not text:
        raise StoreError("a label cannot be empty")
    if len(text) > MAX_LABEL_LEN:
        raise StoreError(f"label too long ({len(text)} characters, at most {MAX_LABEL_LEN})")
    if text in (".", "..") or "/" in text or "\\" in text or any(unicodedata.category(c)[0] == "C" for c in text):
        raise StoreError(f"label {text[:40]!r}: no slashes, control characters, '.' or '..'")
    return text


def check_who(who: Any) -> str:
    """The name of whoever acts, as stored (``anonymous`` when empty)."""
    text = "".join(c for c in str(who or "") if unicodedata.category(c)[0] != "C").strip()
    return text[:64] or "anonymous"


def parse_label_list(text: str) -> list[str]:
    """Class names from text: one per line, or comma-separated; duplicates dropped, order kept."""
    parts = []
    for line in str(text or "").splitlines():
        parts.extend(line.split(",") if "," in line else [line])
    out: list[str] = []
    for p in parts:
        if p.strip():
            name = check_label(p)
            if name not in out:
                out.append(name)
    return out


@dataclass
class ClipRecord:
    """A stored clip. ``path`` is the stored file (content-addressed); ``original_name`` is text only."""

    id: int
    sha256: str
    ext: str
    original_name: str
    size_bytes: int
    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    added_by: str
    added_at: str
    path: Path = field(default=Path(), repr=False)

    @property
    def short_id(self) -> str:
        """The first 16 hex digits of the SHA-256 (the clip's name in exports)."""
        return self.sha256[:16]


@dataclass
class LabelRecord:
    """One labelling act: ``source`` "person" or "model"; ``start_s``/``end_s`` ``None`` = the whole clip."""

    id: int
    clip_id: int
    sha256: str
    label: str
    start_s: float | None
    end_s: float | None
    source: str
    labeled_by: str
    labeled_at: str
    score: float | None = None
    model: str | None = None
    label_set: str | None = None


@dataclass
class LabelSet:
    """A named list of class names (``source``: "person", "import", "model:<weights>")."""

    name: str
    labels: list[str]
    source: str
    created_by: str
    created_at: str


@dataclass
class QueueItem:
    """A clip with its current person label and newest model suggestion (either may be ``None``)."""

    clip: ClipRecord
    person: LabelRecord | None
    model: LabelRecord | None

    @property
    def done(self) -> bool:
        return self.person is not None


@dataclass
class ImportReport:
    """What an import did: clips added (new files), labels added, rows skipped as duplicates,
    rows whose video was not found, videos refused (not decodable), and label names seen."""

    clips_added: int = 0
    labels_added: int = 0
    duplicates: int = 0
    missing: int = 0
    refused: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.labels_added} labels imported", f"{self.clips_added} new clips"]
        if self.duplicates:
            parts.append(f"{self.duplicates} already present")
        if self.missing:
            parts.append(f"{self.missing} rows without their video")
        if self.refused:
            parts.append(f"{len(self.refused)} files refused")
        return ", ".join(parts)


def _clip_from_row(row: sqlite3.Row, clips_dir: Path) -> ClipRecord:
    d = dict(row)
    rec = ClipRecord(**{k: d[k] for k in ClipRecord.__dataclass_fields__ if k != "path"})
    rec.path = clips_dir / rec.sha256[:2] / f"{rec.sha256}{rec.ext}"
    return rec


def _label_from_row(row: sqlite3.Row) -> LabelRecord:
    d = dict(row)
    return LabelRecord(**{k: d[k] for k in LabelRecord.__dataclass_fields__})


def _fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


class LabelStore:
    """Clips, labels and label sets in ``data_dir`` (see the module docstring).

    Safe to share between threads and processes: every call opens its own
    SQLite connection (``busy_timeout`` 30 s), and every write is one
    transaction. ``max_clip_bytes``: uploads larger than this are refused.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, max_clip_bytes: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        self.max_clip_bytes = max_clip_bytes
        for sub in ("clips", "exports", "models", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            with self._write(conn):
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(_SCHEMA_VERSION),))

    # ------------------------------------------------------------------ paths
    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def clips_dir(self) -> Path:
        return self.data_dir / "clips"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def _clean_tmp(self, older_than_s: float = 3600.0) -> None:
        # Leftovers of uploads interrupted by a crash (recent ones may belong to a live process).
        cutoff = time.time() - older_than_s
        for p in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()

    # ------------------------------------------------------------------ connections
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    @staticmethod
    @contextlib.contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` for a sound database)."""
        with self._connect() as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    # ------------------------------------------------------------------ clips
    def add_clip(self, src: str | os.PathLike, original_name: str | None = None,
                 added_by: str | None = None) -> tuple[ClipRecord, bool]:
        """Copy the video at ``src`` into the store; returns ``(clip, created)``.

        ``created`` is ``False`` when the same bytes were stored before (that
        clip is returned). Raises :class:`UploadRefused` (nothing stored) for a
        file over the size limit or one that does not decode.
        """
        from videoapp.data.video import VideoError, VideoReader

        name = display_name(original_name or Path(src).name)
        suffix = os.path.splitext(name)[1].lower()
        ext = suffix if suffix in CLIP_EXTENSIONS else ".video"
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}{ext}"
        try:
            digest, size = self._copy_hashing(Path(src), tmp, name)
            try:
                with VideoReader(tmp) as reader:
                    info = reader.info
                    reader.get_frames([0, info.num_frames - 1])
            except VideoError as exc:
                raise UploadRefused(f"{name}: not a video this app can decode ({exc.problem})") from None
            except Exception as exc:  # a decoder failing in a way VideoReader did not anticipate
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise UploadRefused(f"{name}: not a video this app can decode ({reason})") from None
            existing = self.get_clip(digest)
            if existing is not None:
                return existing, False
            final = self.clips_dir / digest[:2] / f"{digest}{ext}"
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists():
                os.replace(tmp, final)
            with self._connect() as conn, self._write(conn):
                cur = conn.execute(
                    "INSERT OR IGNORE INTO clips (sha256, ext, original_name, size_bytes, num_frames, fps, duration_s,"
                    " width, height, codec, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (digest, ext, name, size, int(info.num_frames), float(info.fps), float(info.duration_s),
                     int(info.width), int(info.height), str(info.codec), check_who(added_by), now_iso()))
                created = cur.rowcount == 1
            clip = self.get_clip(digest)
            assert clip is not None
            return clip, created
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _copy_hashing(self, src: Path, dst: Path, name: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        limit = self.max_clip_bytes
        try:
            with open(src, "rb") as fin, open(dst, "wb") as fout:
                while True:
                    chunk = fin.read(_COPY_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise UploadRefused(f"{name}: larger than the upload limit of {limit / 2**20:g} MB")
                    h.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
        except IsADirectoryError:
            raise UploadRefused(f"{name}: is a folder, not a video file") from None
        except FileNotFoundError:
            raise UploadRefused(f"{name}: the uploaded file is gone (upload it again)") from None
        except PermissionError:
            raise UploadRefused(f"{name}: cannot read the file (permission denied)") from None
        if size == 0:
            raise UploadRefused(f"{name}: empty file (0 bytes)")
        return h.hexdigest(), size

    def get_clip(self, key: int | str) -> ClipRecord | None:
        """The clip with this row id, full SHA-256, or unique SHA-256 prefix (>= 8 hex digits); else ``None``."""
        with self._connect() as conn:
            if isinstance(key, int):
                row = conn.execute("SELECT * FROM clips WHERE id = ?", (key,)).fetchone()
            else:
                key = str(key).lower()
                if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
                    return None
                rows = conn.execute("SELECT * FROM clips WHERE sha256 >= ? AND sha256 < ? LIMIT 2",
                                    (key, key + "g")).fetchall()
                row = rows[0] if len(rows) == 1 else None
        return _clip_from_row(row, self.clips_dir) if row is not None else None

    def require_clip(self, key: int | str) -> ClipRecord:
        clip = self.get_clip(key)
        if clip is None:
            raise StoreError(f"no clip {key!s:.20} in the store")
        return clip

    def clips(self) -> list[ClipRecord]:
        """All clips, oldest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM clips ORDER BY id").fetchall()
        return [_clip_from_row(r, self.clips_dir) for r in rows]

    # ------------------------------------------------------------------ labels
    def add_label(self, clip: ClipRecord | int | str, label: str, *, source: str = "person",
                  labeled_by: str | None = None, start_s: float | None = None, end_s: float | None = None,
                  score: float | None = None, model: str | None = None, label_set: str | None = None,
                  labeled_at: str | None = None) -> LabelRecord:
        """Record one label for ``clip`` (one transaction) and return it.

        ``start_s``/``end_s``: the segment in seconds (``None``: from the start /
        to the end); they are clamped to the clip and must leave a non-empty span.
        """
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        label = check_label(label)
        if source not in SOURCES:
            raise StoreError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        start_s, end_s = self._check_segment(rec, start_s, end_s)
        row = (rec.id, label, start_s, end_s, source, check_who(labeled_by), labeled_at or now_iso(),
               None if score is None else float(score), model, label_set)
        with self._connect() as conn, self._write(conn):
            cur = conn.execute(
                "INSERT INTO labels (clip_id, label, start_s, end_s, source, labeled_by, labeled_at, score, model,"
                " label_set) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            label_id = int(cur.lastrowid)
        return LabelRecord(label_id, rec.id, rec.sha256, label, start_s, end_s, source, row[5], row[6],
                           row[7], model, label_set)

    @staticmethod
    def _check_segment(clip: ClipRecord, start_s: float | None, end_s: float | None) -> tuple[float | None, float | None]:
        def num(v: Any, what: str) -> float | None:
            if v is None or v == "":
                return None
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise StoreError(f"{what} must be a number of seconds, got {v!r}") from None
            if not math.isfinite(x):
                raise StoreError(f"{what} must be a finite number of seconds")
            return x

        s, e = num(start_s, "start"), num(end_s, "end")
        dur = clip.duration_s
        if s is not None:
            s = min(max(s, 0.0), dur)
            if s <= 1e-3:
                s = None
        if e is not None:
            e = min(max(e, 0.0), dur)
            if e >= dur - 1e-3:
                e = None
        lo, hi = (s or 0.0), (dur if e is None else e)
        if hi - lo <= 0:
            raise StoreError(f"the segment {lo:.2f}-{hi:.2f} s is empty (the clip is {dur:.2f} s long)")
        return (None if s is None else round(s, 3)), (None if e is None else round(e, 3))

    def labels_of(self, clip: ClipRecord | int | str) -> list[LabelRecord]:
        """Every label row of ``clip``, newest first."""
        rec = clip if isinstance(clip, ClipRecord) else self.require_clip(clip)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT labels.*, clips.sha256 FROM labels JOIN clips ON clips.id = labels.clip_id"
                " WHERE clip_id = ? ORDER BY labels.id DESC", (rec.id,)).fetchall()
        return [_label_from_row(r) for r in rows]

    def all_labels(self) -> list[LabelRecord]:
        """Every label row, oldest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT labels.*, clips.sha256 FROM labels JOIN clips ON clips.id = labels.clip_id"
                                " ORDER BY labels.id").fetchall()
        return [_label_from_row(r) for r in rows]

    def _latest(self, source: str) -> dict[int, LabelRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT labels.*, clips.sha256 FROM labels JOIN clips ON clips.id = labels.clip_id"
                " WHERE labels.id IN (SELECT MAX(id) FROM labels WHERE source = ? GROUP BY clip_id)",
                (source,)).fetchall()
        return {r["clip_id"]: _label_from_row(r) for r in rows}

    def current_label(self, clip: ClipRecord | int | str, include_model: bool = True) -> LabelRecord | None:
        """The newest person label of ``clip``, else (with ``include_model``) its newest model suggestion."""
        rows = self.labels_of(clip)
        for r in rows:
            if r.source == "person":
                return r
        if include_model:
            for r in rows:
                if r.source == "model":
                    return r
        return None

    def model_suggestion(self, clip: ClipRecord | int | str, model: str | None = None) -> LabelRecord | None:
        """The newest model label of ``clip`` (made by ``model`` when given)."""
        for r in self.labels_of(clip):
            if r.source == "model" and (model is None or r.model == model):
                return r
        return None

    def current_labels(self, include_model: bool = False) -> dict[int, LabelRecord]:
        """``{clip id: current label}`` for every labelled clip (see :meth:`current_label`)."""
        out = self._latest("person")
        if include_model:
            for cid, rec in self._latest("model").items():
                out.setdefault(cid, rec)
        return out

    def queue(self) -> list[QueueItem]:
        """Every clip (oldest first) with its current person label and newest model suggestion."""
        person, model = self._latest("person"), self._latest("model")
        return [QueueItem(c, person.get(c.id), model.get(c.id)) for c in self.clips()]

    def counts(self) -> dict[str, Any]:
        """``{"clips", "labeled", "per_label": {label: {"person": n, "model": n}}, "per_source": {...}}``.

        Counted over each clip's current labels: its newest person label, and
        its newest model suggestion for clips no person has labelled yet.
        """
        person, model = self._latest("person"), self._latest("model")
        per_label: dict[str, dict[str, int]] = {}
        for rec in person.values():
            per_label.setdefault(rec.label, {"person": 0, "model": 0})["person"] += 1
        model_only = {cid: r for cid, r in model.items() if cid not in person}
        for rec in model_only.values():
            per_label.setdefault(rec.label, {"person": 0, "model": 0})["model"] += 1
        with self._connect() as conn:
            n_clips = int(conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0])
            rows = conn.execute("SELECT source, COUNT(*) FROM labels GROUP BY source").fetchall()
        return {
            "clips": n_clips,
            "labeled": len(person),
            "suggested_only": len(model_only),
            "per_label": dict(sorted(per_label.items())),
            "per_source": {"person": len(person), "model": len(model_only)},
            "rows_per_source": {r[0]: int(r[1]) for r in rows},
        }

    # ------------------------------------------------------------------ label sets
    def save_label_set(self, name: str, labels: Sequence[str], *, source: str = "person",
                       created_by: str | None = None) -> LabelSet:
        """Create or replace the label set ``name`` (one transaction)."""
        name = check_label(name)
        clean: list[str] = []
        for lab in labels:
            lab = check_label(lab)
            if lab not in clean:
                clean.append(lab)
        if not clean:
            raise StoreError(f"label set {name!r} needs at least one label")
        rec = LabelSet(name, clean, str(source), check_who(created_by), now_iso())
        with self._connect() as conn, self._write(conn):
            conn.execute(
                "INSERT INTO label_sets (name, labels, source, created_by, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, source = excluded.source,"
                " created_by = excluded.created_by, created_at = excluded.created_at",
                (rec.name, json.dumps(rec.labels), rec.source, rec.created_by, rec.created_at))
        return rec

    def label_sets(self) -> list[LabelSet]:
        """All label sets, by name."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM label_sets ORDER BY name").fetchall()
        return [LabelSet(r["name"], json.loads(r["labels"]), r["source"], r["created_by"], r["created_at"])
                for r in rows]

    def get_label_set(self, name: str) -> LabelSet | None:
        for s in self.label_sets():
            if s.name == name:
                return s
        return None

    # ------------------------------------------------------------------ export
    def _export_rows(self, include_model: bool) -> list[tuple[ClipRecord, LabelRecord]]:
        current = self.current_labels(include_model=include_model)
        return [(c, current[c.id]) for c in self.clips() if c.id in current]

    def new_export_dir(self, kind: str) -> Path:
        """A fresh folder ``exports/<UTC stamp>-<kind>-<random>``."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = self.exports_dir / f"{stamp}-{kind}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path

    def write_segment(self, clip: ClipRecord, start_s: float | None, end_s: float | None, dst: Path) -> Path:
        """The clip's segment as a video file at ``dst`` (its extension may change: see below).

        A whole clip with a known extension is a byte copy (same SHA-256);
        otherwise the frames of ``[start_s, end_s)`` are decoded and encoded
        as H.264 MP4 (PyAV, even frame size), and ``dst`` gets ``.mp4``.
        """
        dst.parent.mkdir(parents=True, exist_ok=True)
        if start_s is None and end_s is None and clip.ext in CLIP_EXTENSIONS:
            out = dst.with_suffix(clip.ext)
            shutil.copyfile(clip.path, out)
            return out
        from videoapp.data.synthetic import write_video
        from videoapp.data.video import VideoReader

        out = dst.with_suffix(".mp4")
        with VideoReader(clip.path) as reader:
            info = reader.info
            first = 0 if start_s is None else int(round(start_s * info.fps))
            stop = info.num_frames if end_s is None else int(round(end_s * info.fps))
            first = min(max(first, 0), info.num_frames - 1)
            stop = min(max(stop, first + 1), info.num_frames)
            h, w = info.height - info.height % 2, info.width - info.width % 2
            frames = (f[:h, :w] for _, f in reader.iter_frames(first, stop))
            tmp = out.with_name(out.stem + ".part.mp4")
            write_video(tmp, frames, fps=info.fps)
            os.replace(tmp, out)
        return out

    def export_kinetics(self, out_dir: str | os.PathLike | None = None, *, include_model: bool = False,
                        with_clips: bool = True, split: str = "train") -> Path:
        """Write ``labels.csv`` (Kinetics columns + provenance) and, ``with_clips``, ``videos/<stem>.mp4``.

        Returns the CSV path. ``youtube_id`` is the clip's short id;
        ``time_start``/``time_end`` are whole seconds around the segment (as in
        Kinetics) and ``start_s``/``end_s`` the exact segment. Each video is cut
        to its segment, so it starts at the segment's start.
        """
        from videoapp.data.datasets import kinetics_stem

        out = Path(out_dir) if out_dir is not None else self.new_export_dir("kinetics")
        out.mkdir(parents=True, exist_ok=True)
        rows = self._export_rows(include_model)
        csv_path = out / "labels.csv"
        tmp = csv_path.with_name("labels.csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(KINETICS_COLUMNS + EXTRA_COLUMNS)
            for clip, lab in rows:
                s = lab.start_s or 0.0
                e = clip.duration_s if lab.end_s is None else lab.end_s
                t0, t1 = int(math.floor(s)), int(math.ceil(e))
                if with_clips:
                    self.write_segment(clip, lab.start_s, lab.end_s,
                                       out / "videos" / kinetics_stem(clip.short_id, t0, t1))
                w.writerow([lab.label, clip.short_id, t0, t1, split, clip.sha256, _fmt_seconds(lab.start_s),
                            _fmt_seconds(lab.end_s), lab.source, lab.labeled_by, lab.labeled_at])
        os.replace(tmp, csv_path)
        return csv_path

    def export_folder(self, out_dir: str | os.PathLike | None = None, *, include_model: bool = False) -> Path:
        """Write a class-per-folder tree ``<label>/<clip short id>.mp4`` (clips cut to their segments)."""
        out = Path(out_dir) if out_dir is not None else self.new_export_dir("folders")
        out.mkdir(parents=True, exist_ok=True)
        for clip, lab in self._export_rows(include_model):
            folder = out / check_label(lab.label)
            if folder.resolve().parent != out.resolve():  # belt and braces: labels never leave the tree
                raise StoreError(f"label {lab.label!r} cannot be a folder name")
            self.write_segment(clip, lab.start_s, lab.end_s, folder / clip.short_id)
        return out

    # ------------------------------------------------------------------ import
    def _has_label(self, clip: ClipRecord, label: str, source: str, labeled_by: str, labeled_at: str | None,
                   start_s: float | None, end_s: float | None) -> bool:
        for r in self.labels_of(clip):
            if (r.label, r.source, r.labeled_by, r.start_s, r.end_s) == (label, source, labeled_by, start_s, end_s) \
                    and (labeled_at is None or r.labeled_at == labeled_at):
                return True
        return False

    def _import_label(self, report: ImportReport, clip: ClipRecord, label: str, *, source: str, labeled_by: str,
                      labeled_at: str | None, start_s: float | None, end_s: float | None,
                      label_set: str | None) -> None:
        start_s, end_s = self._check_segment(clip, start_s, end_s)
        if self._has_label(clip, label, source, labeled_by, labeled_at, start_s, end_s):
            report.duplicates += 1
            return
        self.add_label(clip, label, source=source, labeled_by=labeled_by, labeled_at=labeled_at, start_s=start_s,
                       end_s=end_s, label_set=label_set)
        report.labels_added += 1
        if label not in report.labels:
            report.labels.append(label)

    def import_kinetics_csv(self, csv_path: str | os.PathLike, *, video_root: str | os.PathLike | None = None,
                            videos: Mapping[str, str | os.PathLike] | None = None, labeled_by: str | None = None,
                            label_set: str | None = None) -> ImportReport:
        """Import labels from a Kinetics-style CSV (ours or the official lists).

        A row's video is found, in this order: a clip already stored with the
        row's ``sha256`` (then ``start_s``/``end_s`` are its segment); a file
        whose stem is ``<youtube_id>_<time_start:06d>_<time_end:06d>`` among
        ``videos`` (``{file stem: path}``, e.g. uploaded files) or under
        ``video_root`` (default: the CSV's folder), labelled as a whole. Rows
        keep their ``source``/``labeled_by``/``labeled_at`` when the CSV has
        them (else "person", ``labeled_by``, now); a row already in the store
        is skipped, so importing the same file twice adds nothing.
        """
        from videoapp.data.datasets import VIDEO_EXTENSIONS, kinetics_stem

        csv_path = Path(csv_path)
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                need = [k for k in ("label", "youtube_id", "time_start", "time_end") if k not in fields]
                if need:
                    raise StoreError(f"{display_name(csv_path.name)}: not a Kinetics CSV "
                                     f"(missing columns: {', '.join(need)})")
                rows = list(reader)
        except UnicodeDecodeError:
            raise StoreError(f"{display_name(csv_path.name)}: not a text CSV file") from None
        except csv.Error as exc:
            raise StoreError(f"{display_name(csv_path.name)}: unreadable CSV ({exc})") from None
        index: dict[str, Path] = {}
        root = Path(video_root) if video_root is not None else (None if videos is not None else csv_path.parent)
        if root is not None and root.is_dir():
            for dirpath, _, filenames in os.walk(root):
                for fn in sorted(filenames):
                    stem, ext = os.path.splitext(fn)
                    if ext.lower() in VIDEO_EXTENSIONS:
                        index.setdefault(stem, Path(dirpath) / fn)
        for stem, p in (videos or {}).items():
            index[stem] = Path(p)
        who = check_who(labeled_by)
        report = ImportReport()
        stored: dict[str, ClipRecord] = {}
        for line, r in enumerate(rows, start=2):
            try:
                label = check_label(r.get("label") or "")
            except StoreError as exc:
                raise StoreError(f"{display_name(csv_path.name)}:{line}: {exc}") from None
            source = (r.get("source") or "person").strip()
            if source not in SOURCES:
                raise StoreError(f"{display_name(csv_path.name)}:{line}: source {source!r} is not model or person")
            row_who = check_who(r.get("labeled_by") or who)
            row_at = (r.get("labeled_at") or "").strip() or None
            clip = None
            start_s = end_s = None
            sha = (r.get("sha256") or "").strip().lower()
            if len(sha) == 64:
                clip = self.get_clip(sha)
                if clip is not None:
                    start_s, end_s = r.get("start_s") or None, r.get("end_s") or None
            if clip is None:
                try:
                    stem = kinetics_stem(r["youtube_id"], r["time_start"], r["time_end"])
                except (TypeError, ValueError):
                    raise StoreError(f"{display_name(csv_path.name)}:{line}: bad time_start/time_end") from None
                path = index.get(stem)
                if path is None:
                    report.missing += 1
                    continue
                if stem not in stored:
                    try:
                        stored[stem], created = self.add_clip(path, original_name=path.name, added_by=who)
                    except UploadRefused as exc:
                        report.refused.append(str(exc))
                        continue
                    report.clips_added += int(created)
                clip = stored[stem]
            self._import_label(report, clip, label, source=source, labeled_by=row_who, labeled_at=row_at,
                               start_s=start_s, end_s=end_s, label_set=label_set)
        if label_set and report.labels:
            existing = self.get_label_set(label_set)
            merged = list(existing.labels) if existing else []
            merged += [lab for lab in report.labels if lab not in merged]
            self.save_label_set(label_set, merged, source="import", created_by=who)
        return report

    def import_folder(self, root: str | os.PathLike, *, labeled_by: str | None = None,
                      label_set: str | None = None) -> ImportReport:
        """Import a class-per-folder tree: every video under ``root/<label>/`` gets that label (whole clip)."""
        from videoapp.data.datasets import VIDEO_EXTENSIONS

        root = Path(root)
        if not root.is_dir():
            raise StoreError(f"{root}: no such folder")
        who = check_who(labeled_by)
        report = ImportReport()
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = check_label(folder.name)
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                for fn in sorted(filenames):
                    if os.path.splitext(fn)[1].lower() not in VIDEO_EXTENSIONS:
                        continue
                    try:
                        clip, created = self.add_clip(Path(dirpath) / fn, original_name=fn, added_by=who)
                    except UploadRefused as exc:
                        report.refused.append(str(exc))
                        continue
                    report.clips_added += int(created)
                    self._import_label(report, clip, label, source="person", labeled_by=who, labeled_at=None,
                                       start_s=None, end_s=None, label_set=label_set)
        if label_set and report.labels:
            self.save_label_set(label_set, report.labels, source="import", created_by=who)
        return report


__all__ = [
    "LabelStore", "ClipRecord", "LabelRecord", "LabelSet", "QueueItem", "ImportReport", "StoreError",
    "UploadRefused", "default_data_dir", "check_label", "check_who", "parse_label_list", "display_name", "now_iso",
]
