"""ONNX export of our classifiers with the weights' metadata, and onnxruntime inference.

An exported file is self-describing, like our ``.safetensors`` weights: its
``metadata_props`` hold the registry name (``model``), ``labels`` and the clip
protocol (``num_frames``, ``sampling_rate``, ``crop_size``, ``mean``, ``std``,
``channel_order``, ``sampling``), so ``videoapp predict --weights model.onnx``
samples and preprocesses clips exactly as with the weights it came from,
through onnxruntime and without the PyTorch model code. Every value is JSON
(``metadata_props`` is ``str -> str``; ``json.loads`` gives it back).

The graph has one input ``clip``: float32 ``[B, 3, T, S, S]`` (normalised RGB,
the Predictor's transform) and one output ``logits`` ``[B, num_classes]``.
``B`` is 1 unless exported with ``dynamic_batch``; :class:`OnnxModel` runs a
fixed-batch graph one batch at a time, so the Predictor works with both.

Which exporter (measured with torch 2.14.1, onnxscript 0.7.2, onnxruntime 1.32):

- TorchScript tracing (``torch.onnx.export(..., dynamo=False)``, "torchscript"):
  exports MViTv2-S (4 x 96 px clip) in ~30 s and Hiera-B (8 x 64 px) in ~15 s
  on the shared 2-core machine (both at 16 x 224 px: ~8 minutes each at a load
  of 17), max relative logit difference ~1e-6. Its ``aten::movedim`` translation writes
  negative axes into ``Transpose.perm`` (``[0, -1, 1, 2, 3]``, rejected by
  onnxruntime), so export registers a symbolic that normalises them. Tracing
  records Python ints as constants: MViTv2 takes the batch size as a Python
  int from ``shape[:2]`` slices, so its traced graph only runs the traced batch
  size (Hiera's runs any).
- ``torch.export`` (the default ``dynamo=True``, "dynamo"): keeps the batch
  symbolic, but took 320 s for MViTv2-S at 4 x 96 px (10x tracing), and its decomposition of the CPU
  flash-attention op fails on MViTv2 ("Cannot view a tensor with shape
  [B, 256, 2, 20] and strides ...") unless SDPA is traced through its math
  kernel (``sdpa_kernel(SDPBackend.MATH)``, same numbers).

``exporter="auto"`` therefore traces with TorchScript and, when a dynamic
batch is asked for and the traced graph fails the check at another batch
size, exports again with ``torch.export``.

Models run on their exact (autograd-compatible) path during export: MViTv2's
inference-only path (row chunks written into a preallocated buffer, the last
block computing the cls row only) is chosen by ``torch.is_grad_enabled()``,
which tracing would bake in; the exported last block computes every row
(about 4 % more work for MViTv2-S), the logits are the same.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from videoapp.files import first_line

__all__ = [
    "ExportError",
    "ExportReport",
    "OnnxModel",
    "export_onnx",
    "onnx_metadata",
    "check_onnx",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DEFAULT_OPSET",
]

INPUT_NAME = "clip"
OUTPUT_NAME = "logits"
# 18: LayerNormalization and ReduceMax with axes as inputs; run by onnxruntime >= 1.14.
DEFAULT_OPSET = 18
EXPORTERS = ("auto", "torchscript", "dynamo")
# Clip-protocol keys every export carries (the Predictor needs them all).
PROTOCOL_KEYS = ("num_frames", "sampling_rate", "crop_size", "mean", "std", "channel_order", "sampling")
_INSTALL_HINT = "pip install 'videoapp[onnx]'"


class ExportError(ValueError):
    """An export that cannot be made or checked, or an ONNX file that cannot be run. ``str()`` is one line."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it compared with PyTorch.

    ``input_shape`` is the graph's input ``[B, 3, T, S, S]`` with ``B = -1``
    for a dynamic batch; ``max_abs_diff`` is ``max |logits_onnx - logits_torch|``
    and ``max_abs_logit`` ``max |logits_torch|`` over the check inputs (NaN
    when not verified); ``checked_batches`` the batch sizes that were run.
    """

    path: Path
    model: str
    exporter: str
    opset: int
    input_shape: tuple[int, ...]
    num_classes: int
    max_abs_diff: float = math.nan
    max_abs_logit: float = math.nan
    checked_batches: tuple[int, ...] = ()

    @property
    def relative_diff(self) -> float:
        """``max_abs_diff / max_abs_logit`` (the quantity held to ``tolerance``)."""
        return self.max_abs_diff / self.max_abs_logit if self.max_abs_logit > 0 else self.max_abs_diff


def _require(module: str, what: str) -> Any:
    """Import an optional dependency or raise a one-line :class:`ExportError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the '{module}' package ({_INSTALL_HINT})") from None


# --------------------------------------------------------------------------- metadata
def _encode(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): json.dumps(v) for k, v in metadata.items() if v is not None}


def _decode(props: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v  # written by another tool: keep the raw string
    return out


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded ``metadata_props`` of an ONNX file (weights are not loaded)."""
    onnx = _require("onnx", "reading ONNX metadata")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, others OSError
        raise ExportError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    return _decode({p.key: p.value for p in model.metadata_props})


def check_onnx(path: str | os.PathLike) -> None:
    """Run ``onnx.checker`` (full check, with shape inference) on the file at ``path``."""
    onnx = _require("onnx", "checking ONNX models")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path}: onnx.checker rejected the model ({first_line(exc)})") from None


# --------------------------------------------------------------------------- exporters
@contextlib.contextmanager
def _movedim_fix(opset: int) -> Iterator[None]:
    """Register a TorchScript-exporter symbolic for ``aten::movedim`` that normalises negative axes.

    torch 2.14's own symbolic copies ``movedim(x, -1, 1)`` straight into
    ``Transpose(perm=[0, -1, 1, 2, 3])``, which ONNX forbids (onnxruntime:
    "Invalid attribute perm"). Removed again on exit (the stock one returns).
    """
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "t", "t")
    def movedim(g, x, source, destination):  # noqa: ANN001 (TorchScript graph objects)
        rank = symbolic_helper._get_tensor_rank(x)
        if rank is None:
            raise RuntimeError("movedim on a tensor of unknown rank")
        src = [int(s) % rank for s in source.view(-1).tolist()]
        dst = [int(d) % rank for d in destination.view(-1).tolist()]
        rest = iter(i for i in range(rank) if i not in src)
        by_dst = dict(zip(dst, src))
        perm = [by_dst[i] if i in by_dst else next(rest) for i in range(rank)]
        return g.op("Transpose", x, perm_i=perm)

    torch.onnx.register_custom_op_symbolic("aten::movedim", movedim, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::movedim", opset)


@contextlib.contextmanager
def _exact_path(model: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on: models take their exact, traceable path (see the module docstring)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # Tracer warnings (Python ints from shapes, ...) and the legacy exporter's deprecation notice
            # say nothing a user can act on; the numerical check below is what tells a good export.
            warnings.simplefilter("ignore")
            yield
    finally:
        model.train(was_training)


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    x = x.detach().requires_grad_(True)  # the exact path even when the parameters are frozen
    with _exact_path(model), _movedim_fix(opset):
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
        )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    _require("onnxscript", "the torch.export-based ONNX exporter")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    x = x.detach().requires_grad_(True)  # the exact path even when the parameters are frozen
    # The math kernel: the decomposition of the CPU flash-attention op breaks MViTv2's reshapes.
    with _exact_path(model), sdpa_kernel(SDPBackend.MATH), contextlib.redirect_stdout(None):
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
        )
        program.save(str(path))


def _add_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    onnx = _require("onnx", "ONNX export")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in sorted(_encode(metadata).items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = f"videoapp export of {metadata.get('model', '?')}: input clip [B, 3, T, H, W] -> logits"
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- checks
def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The logits of the Predictor's own path (eval, no autograd) as float64."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(x).double().numpy()
    finally:
        model.train(was_training)


def _compare(model: nn.Module, session: Any, batches: tuple[int, ...], shape: tuple[int, ...],
             seed: int) -> tuple[float, float]:
    """``(max |Δlogit|, max |logit|)`` of onnxruntime vs PyTorch on random clips of each batch size."""
    gen = torch.Generator().manual_seed(seed)
    diff = peak = 0.0
    for b in batches:
        x = torch.randn((b, *shape[1:]), generator=gen)
        ref = _torch_logits(model, x)
        try:
            out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].astype(np.float64)
        except Exception as exc:
            raise ExportError(f"onnxruntime failed on a batch of {b} ({first_line(exc)})") from None
        if out.shape != ref.shape:
            raise ExportError(f"onnxruntime returned logits {list(out.shape)}, PyTorch {list(ref.shape)}")
        diff = max(diff, float(np.abs(out - ref).max()))
        peak = max(peak, float(np.abs(ref).max()))
    return diff, peak


def _session(path: Path, num_threads: int | None = None) -> Any:
    ort = _require("onnxruntime", "running ONNX models")
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    options.log_severity_level = 4  # fatal only: failures come back as exceptions, told in one line
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (non-standard) exception types
        raise ExportError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None


# --------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    crop_size: int | None = None,
    dynamic_batch: bool = False,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` (from :func:`videoapp.create_model`) to an ONNX file at ``path``.

    The graph takes ``clip`` float32 ``[B, 3, T, S, S]`` with ``T = num_frames``
    and ``S = crop_size`` (default: the model's ``data_config``, i.e. the clip
    protocol of its weights) and returns ``logits`` ``[B, num_classes]``; ``B``
    is 1, or any size with ``dynamic_batch``. ``metadata_props`` get the
    model's name, labels and clip protocol (with ``T``/``S`` as exported),
    then ``metadata`` on top (e.g. the weights' ``source`` and ``metrics``).

    The file is checked with ``onnx.checker`` and, with ``verify``, run in
    onnxruntime on random clips (batch 1; 1 and 3 with ``dynamic_batch``):
    ``max |Δlogit| <= tolerance * max |logit|`` against PyTorch or
    :class:`ExportError` (and no file). ``exporter`` is "auto",
    "torchscript" or "dynamo" (see the module docstring); ``opset`` the
    ONNX opset. The file appears atomically (written beside ``path``, renamed).
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r} (choose from {', '.join(EXPORTERS)})")
    _require("onnx", "ONNX export")
    if verify:
        _require("onnxruntime", "checking an ONNX export")
    path = Path(path)
    name = str(getattr(model, "model_name", None) or type(model).__name__)
    data = dict(getattr(model, "data_config", None) or {})
    frames = int(num_frames or data.get("num_frames") or 0)
    crop = int(crop_size or data.get("crop_size") or 0)
    if frames < 1 or crop < 1:
        raise ExportError(f"{name}: the clip size is unknown; give num_frames and crop_size")
    if data.get("task") == "detection":
        raise ExportError(f"{name} is an action detector (clips + person boxes): ONNX export covers classifiers only")
    batch = 2 if dynamic_batch else 1
    shape = (batch, 3, frames, crop, crop)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        logits = _torch_logits(model, x)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ExportError(f"{name} cannot run {frames}x{crop}x{crop} clips ({first_line(exc)})") from None
    if logits.ndim != 2:
        raise ExportError(f"{name} returns {list(logits.shape)}, not logits [B, num_classes]: only classifiers export")
    num_classes = int(logits.shape[1])
    labels = getattr(model, "labels", None)
    meta: dict[str, Any] = {
        "model": name,
        "labels": list(labels) if labels else None,
        **{k: data[k] for k in PROTOCOL_KEYS if k in data},
        "num_frames": frames,
        "crop_size": crop,
    }
    meta.setdefault("channel_order", "rgb")
    meta.setdefault("sampling", "rate")
    meta.update(dict(metadata or {}))
    if meta.get("labels") is not None and len(meta["labels"]) != num_classes:
        raise ExportError(f"{name}: {len(meta['labels'])} labels for {num_classes} logits")
    missing = [k for k in PROTOCOL_KEYS if meta.get(k) is None]
    if missing:
        raise ExportError(f"{name}: the clip protocol lacks {', '.join(missing)}")

    order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    check_batches = (1, 3) if dynamic_batch else (1,)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmpdir:
        tmp = Path(tmpdir) / path.name
        last_error: ExportError | None = None
        for used in order:
            try:
                (_export_torchscript if used == "torchscript" else _export_dynamo)(model, x, tmp, opset, dynamic_batch)
            except ExportError:
                raise
            except Exception as exc:
                last_error = ExportError(f"{name}: the {used} exporter failed ({first_line(exc)})")
                continue
            _add_metadata(tmp, {**meta, "exporter": used, "opset": opset, "input": INPUT_NAME, "output": OUTPUT_NAME})
            check_onnx(tmp)
            report = ExportReport(path=path, model=name, exporter=used, opset=opset, num_classes=num_classes,
                                  input_shape=(-1 if dynamic_batch else 1, *shape[1:]))
            if not verify:
                break
            try:
                diff, peak = _compare(model, _session(tmp), check_batches, shape, seed + 1)
            except ExportError as exc:
                last_error = ExportError(f"{name}: the {used} export does not run in onnxruntime: {exc}")
                continue
            report.max_abs_diff, report.max_abs_logit, report.checked_batches = diff, peak, check_batches
            if diff <= tolerance * peak:
                break
            last_error = ExportError(
                f"{name}: the {used} export differs from PyTorch: max |Δlogit| {diff:.3g} > "
                f"{tolerance:g} x max |logit| {peak:.3g}"
            )
        else:
            assert last_error is not None
            raise last_error
        os.replace(tmp, path)
    return report


# --------------------------------------------------------------------------- inference
class OnnxModel(nn.Module):
    """An exported ONNX classifier run by onnxruntime that stands in for the PyTorch model.

    ``forward(x)``: normalised clips ``[B, 3, T, S, S]`` -> logits
    ``[B, num_classes]`` (float32, on ``x``'s device; onnxruntime runs on the
    CPU). A fixed-batch graph is run one batch at a time (the last one padded).
    Carries what :func:`videoapp.create_model` puts on a model, read from the
    file's metadata: ``model_name``, ``labels``, ``data_config`` (the clip
    protocol), ``num_classes``. ``num_threads`` sets onnxruntime's intra-op
    threads (default: its own choice, one per core).

    Raises :class:`ExportError` (one line) for a file onnxruntime cannot read,
    one without our metadata, or when onnxruntime is not installed.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{path}: no such file")
        self.session = _session(self.path, num_threads)
        meta = _decode(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in ("model", *PROTOCOL_KEYS) if k not in meta]
        if missing:
            raise ExportError(f"{path}: not exported by videoapp (no {', '.join(missing[:3])} in its metadata); "
                              "export with 'videoapp export'")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ExportError(f"{path}: expected one input clip [B, 3, T, H, W], got {len(inputs)} inputs")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        in_shape = inputs[0].shape
        self.batch_size = in_shape[0] if isinstance(in_shape[0], int) else None
        self.metadata = meta
        self.model_name = str(meta["model"])
        self.data_config = {k: meta[k] for k in PROTOCOL_KEYS}
        out_classes = outputs[0].shape[-1]
        labels = meta.get("labels")
        self.labels = [str(s) for s in labels] if isinstance(labels, list) else None
        self.num_classes = int(out_classes) if isinstance(out_classes, int) else len(self.labels or [])
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ExportError(f"{path}: {len(self.labels)} labels for {self.num_classes} logits")
        want = [3, int(meta["num_frames"]), int(meta["crop_size"]), int(meta["crop_size"])]
        if [d if isinstance(d, int) else -1 for d in in_shape[1:]] != want:
            raise ExportError(f"{path}: input {in_shape} does not match the metadata's clip [B, {', '.join(map(str, want))}]")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, S, S]`` -> logits ``[B, num_classes]``."""
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        fixed = self.batch_size
        if fixed is None or arr.shape[0] == fixed:
            out = self._run(arr)
        else:
            parts = []
            for start in range(0, arr.shape[0], fixed):
                chunk = arr[start:start + fixed]
                n = chunk.shape[0]
                if n < fixed:
                    chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self._run(chunk)[:n])
            out = np.concatenate(parts)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path.name}, model={self.model_name}, classes={self.num_classes}, batch={self.batch_size or 'dynamic'}"
