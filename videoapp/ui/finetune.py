"""Fine-tuning on the label store's labels, in the background (the web UI's "fine-tune on my labels").

A job (:meth:`FineTuner.start`):

1. exports the store's person labels as a class-per-folder tree, clips cut to
   their segments (:meth:`videoapp.store.LabelStore.export_folder`), into
   ``DATA_DIR/finetune/<job>/data``;
2. writes a training config (``config.yaml`` beside it): the base weights as
   ``model.pretrained``, ``model.freeze_backbone`` for a linear probe (the
   default) or not for a full fine-tune, ``data.source: folder``; when every
   labelled class is one of the base model's classes the class list stays the
   base model's (its classifier is fine-tuned too), otherwise the classifier is
   new;
3. runs ``python -m videoapp train config.yaml`` (:func:`videoapp.engine.train.train`)
   as a child process, so the web server stays responsive and the job can be
   cancelled; progress is read from the run's ``log.jsonl``;
4. on success the weights are at ``DATA_DIR/models/<name>.safetensors``, where the
   UI's model list finds them.

Only one job runs at a time (training saturates this machine's CPU anyway).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from videoapp.files import first_line
from videoapp.store import LabelStore, StoreError

logger = logging.getLogger("videoapp")

MODES = ("linear", "full")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Learning rates per mode (AdamW, warmup + cosine): a fresh classifier on frozen features
# moves fast; the whole network needs a gentle rate.
_LR = {"linear": 5e-3, "full": 5e-4}


class FineTuneError(StoreError):
    """A fine-tune request that cannot start (too few labels, a job already running, bad name)."""


def check_model_name(name: str) -> str:
    """A weights name for ``models/<name>.safetensors``: letters, digits, ``_.-``, at most 64, no leading dot."""
    name = (name or "").strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not _NAME_RE.match(name):
        raise FineTuneError(f"model name {name[:40]!r}: use 1-64 letters, digits, '_', '.', '-' "
                            "(starting with a letter or digit)")
    return name


@dataclass
class FineTuneJob:
    """One background fine-tune run and what is known about it.

    ``state``: "preparing" (cutting clips), "running", "done", "failed" or
    "cancelled". ``step``/``total_steps``/``epoch``/``loss`` come from the run's
    log. ``weights``: the new weights file once done.
    """

    id: str
    name: str
    mode: str
    base: str
    model_name: str
    epochs: int
    job_dir: Path
    weights: Path
    started_by: str
    state: str = "preparing"
    message: str = "cutting the labelled clips"
    num_clips: int = 0
    classes: list[str] = field(default_factory=list)
    batch_size: int = 1
    total_steps: int = 0
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    train_top1: float | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    returncode: int | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    cancel_requested: bool = False

    @property
    def run_dir(self) -> Path:
        return self.job_dir / "run"

    @property
    def log_path(self) -> Path:
        return self.job_dir / "train.log"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if self.total_steps <= 0:
            return 0.0
        return min(self.step / self.total_steps, 1.0)

    def describe(self) -> str:
        """One line for people: what the job is doing."""
        what = f"{'linear probe' if self.mode == 'linear' else 'full fine-tune'} '{self.name}'"
        elapsed = (self.finished_at or time.time()) - self.started_at
        if self.state == "preparing":
            return f"{what}: {self.message}"
        if self.state == "running":
            loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
            return (f"{what}: epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}, step {self.step}/"
                    f"{self.total_steps}{loss} ({elapsed:.0f} s)")
        if self.state == "done":
            acc = f", train top-1 {100 * self.train_top1:.0f}%" if self.train_top1 is not None else ""
            return f"{what}: done in {elapsed:.0f} s on {self.num_clips} clips{acc}; added to the model list"
        return f"{what}: {self.state}: {self.message}"


class FineTuner:
    """Starts and watches fine-tune jobs for one :class:`~videoapp.store.LabelStore` (one at a time)."""

    def __init__(self, store: LabelStore, python: str | None = None) -> None:
        self.store = store
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self.job: FineTuneJob | None = None

    @property
    def root(self) -> Path:
        return self.store.data_dir / "finetune"

    def running(self) -> bool:
        job = self.job
        return job is not None and not job.finished

    def start(self, *, base_weights: str | os.PathLike | None, model_name: str, base_labels: list[str] | None,
              name: str, mode: str = "linear", epochs: int = 20, who: str = "anonymous",
              base_title: str | None = None) -> FineTuneJob:
        """Start a job in the background and return it (its state is then "preparing").

        ``base_weights``: the ``.safetensors`` to start from (``None``: the
        architecture ``model_name`` from scratch); ``base_labels``: its classes.
        Raises :class:`FineTuneError` when it cannot start.
        """
        if mode not in MODES:
            raise FineTuneError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        name = check_model_name(name)
        epochs = int(epochs)
        if not 1 <= epochs <= 1000:
            raise FineTuneError("epochs must be between 1 and 1000")
        weights = self.store.models_dir / f"{name}.safetensors"
        if weights.exists():
            raise FineTuneError(f"a model named '{name}' exists already: choose another name")
        current = self.store.current_labels(include_model=False)
        per_class: dict[str, int] = {}
        for rec in current.values():
            per_class[rec.label] = per_class.get(rec.label, 0) + 1
        if len(per_class) < 2:
            raise FineTuneError(f"label clips with at least 2 different labels first "
                                f"({len(current)} labelled clips, {len(per_class)} labels)")
        with self._lock:
            if self.running():
                raise FineTuneError(f"a fine-tune is running already ({self.job.describe()})")  # type: ignore[union-attr]
            job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
            job = FineTuneJob(id=job_id, name=name, mode=mode, base=base_title or str(base_weights or model_name),
                              model_name=model_name, epochs=epochs, job_dir=self.root / job_id, weights=weights,
                              started_by=who, num_clips=len(current))
            self.job = job
        thread = threading.Thread(target=self._run, args=(job, base_weights, base_labels), daemon=True,
                                  name=f"finetune-{job_id}")
        thread.start()
        return job

    # ------------------------------------------------------------------ the job
    def _run(self, job: FineTuneJob, base_weights, base_labels) -> None:
        try:
            self._prepare(job, base_weights, base_labels)
            if job.cancel_requested:
                self._finish(job, "cancelled", "cancelled before training started")
                return
            self._train(job)
        except Exception as exc:  # report, never crash the server thread
            logger.exception("fine-tune %s failed", job.id)
            self._finish(job, "failed", first_line(exc))

    def _prepare(self, job: FineTuneJob, base_weights, base_labels) -> None:
        job.job_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.store.export_folder(job.job_dir / "data", include_model=False)
        folders = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        n_items = sum(1 for p in data_dir.rglob("*") if p.is_file())
        job.num_clips = n_items
        data: dict[str, Any] = {"source": "folder", "train": str(data_dir), "num_workers": 0,
                                # Direction-sensitive labels (pan_left / pan_right) must not be mirrored.
                                "flip": False}
        if base_labels and all(f in base_labels for f in folders):
            # Keep the base model's class list (and so its trained classifier).
            labels_file = job.job_dir / "classes.txt"
            labels_file.write_text("\n".join(base_labels) + "\n", encoding="utf-8")
            data["labels"] = str(labels_file)
            job.classes = list(base_labels)
        else:
            job.classes = folders
        bs = max(1, min(8, n_items))
        data["batch_size"] = bs
        job.batch_size = bs
        steps_per_epoch = n_items // bs
        job.total_steps = steps_per_epoch * job.epochs
        cfg = {
            "model": {"name": job.model_name, "pretrained": str(base_weights) if base_weights else None,
                      "freeze_backbone": job.mode == "linear"},
            "data": data,
            "optim": {"lr": _LR[job.mode], "min_lr": _LR[job.mode] / 100, "warmup_epochs": 1.0 if job.epochs > 4 else 0.0,
                      "weight_decay": 0.05 if job.mode == "full" else 1e-4},
            "train": {"epochs": job.epochs, "out_dir": str(job.run_dir), "export": str(job.weights),
                      "device": "cpu", "progress": False, "plot": True, "log_every": 1},
        }
        (job.job_dir / "config.yaml").write_text(
            f"# fine-tune started from the web UI by {job.started_by}\n" + yaml.safe_dump(cfg, sort_keys=False),
            encoding="utf-8")

    def _train(self, job: FineTuneJob) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(job.log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [self.python, "-m", "videoapp", "train", str(job.job_dir / "config.yaml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(job.job_dir), env=env)
        job.proc = proc
        job.state, job.message = "running", "training"
        while proc.poll() is None:
            self._read_progress(job)
            time.sleep(0.5)
        job.returncode = proc.returncode
        self._read_progress(job)
        if job.cancel_requested:
            self._finish(job, "cancelled", "cancelled")
        elif proc.returncode == 0 and job.weights.is_file():
            self._finish(job, "done", f"weights {job.weights.name}")
        else:
            self._finish(job, "failed", self._last_error(job) or f"training exited with status {proc.returncode}")

    def _read_progress(self, job: FineTuneJob) -> None:
        path = job.run_dir / "log.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            if rec.get("type") == "step":
                job.step = max(job.step, int(rec.get("step", 0)))
                job.loss = rec.get("loss", job.loss)
            elif rec.get("type") == "epoch":
                job.epoch = max(job.epoch, int(rec.get("epoch", 0)))
                job.step = max(job.step, int(rec.get("step", 0)))
                job.train_top1 = rec.get("train_top1", job.train_top1)

    @staticmethod
    def _last_error(job: FineTuneJob) -> str:
        try:
            lines = [ln.strip() for ln in job.log_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError:
            return ""
        for ln in reversed(lines):
            if "error" in ln.lower():
                return ln[:300]
        return lines[-1][:300] if lines else ""

    def _finish(self, job: FineTuneJob, state: str, message: str) -> None:
        job.state, job.message = state, message
        job.finished_at = time.time()
        if state != "done":
            # Never leave a half-made model in the list.
            for p in (job.weights, job.weights.with_name(job.weights.name + ".tmp")):
                if p.exists() and state == "cancelled":
                    p.unlink()
        if state == "done":
            shutil.rmtree(job.job_dir / "data", ignore_errors=True)  # the cut clips; the store keeps the originals

    def cancel(self) -> bool:
        """Stop the running job (its training process gets SIGTERM); ``False`` when none runs."""
        job = self.job
        if job is None or job.finished:
            return False
        job.cancel_requested = True
        proc = job.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return True

    def wait(self, timeout: float | None = None) -> FineTuneJob | None:
        """Block until the current job finishes (tests, scripts); returns it."""
        deadline = None if timeout is None else time.time() + timeout
        while self.job is not None and not self.job.finished:
            if deadline is not None and time.time() > deadline:
                break
            time.sleep(0.2)
        return self.job

    def shutdown(self) -> None:
        """Cancel a running job (the server is stopping)."""
        self.cancel()
        job = self.job
        if job is not None and job.proc is not None:
            try:
                job.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                job.proc.kill()


__all__ = ["FineTuner", "FineTuneJob", "FineTuneError", "MODES", "check_model_name"]
