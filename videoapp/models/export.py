"""ONNX export of our classifiers and action detectors with the weights' metadata, and onnxruntime inference.

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

An action detector (registry ``task: detection``, the ``*_ava`` models) has a
second input ``boxes``: float32 ``[K, 5]`` rows ``[batch_index, x1, y1, x2,
y2]`` in pixels of the clip, any ``K``, and its output ``logits`` is
``[K, num_actions]``. Its RoIAlign goes through torchvision's ONNX symbolic
(ONNX ``RoiAlign``, ``coordinate_transformation_mode="half_pixel"`` for
``aligned=True``), which needs opset 16 or later. Detectors export one clip
per run (``B = 1``, any ``K``); :class:`OnnxModel` runs a batch clip by clip,
each with its own boxes. The metadata gets ``task: "detection"``.

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
    "BOXES_NAME",
    "OUTPUT_NAME",
    "DEFAULT_OPSET",
]

INPUT_NAME = "clip"
OUTPUT_NAME = "logits"
# 18: LayerNormalization and ReduceMax with axes as inputs; run by onnxruntime >= 1.14.
DEFAULT_OPSET = 18
EXPORTERS = ("auto", "torchscript", "dynamo")
BOXES_NAME = "boxes"
# Clip-protocol keys every export carries (the Predictor needs them all).
PROTOCOL_KEYS = ("num_frames", "sampling_rate", "crop_size", "mean", "std", "channel_order", "sampling")
# RoiAlign with half-pixel coordinates (torchvision's aligned=True) exists from opset 16.
DETECTOR_MIN_OPSET = 16
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


def _export_torchscript(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int,
                        dynamic_batch: bool) -> None:
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else {}
    names = [INPUT_NAME]
    if len(inputs) == 2:  # a detector: any number of boxes, one logit row each
        names.append(BOXES_NAME)
        axes = {BOXES_NAME: {0: "boxes"}, OUTPUT_NAME: {0: "boxes"}}
    x = inputs[0].detach().requires_grad_(True)  # the exact path even when the parameters are frozen
    with _exact_path(model), _movedim_fix(opset):
        torch.onnx.export(
            model, (x, *inputs[1:]), str(path), dynamo=False, opset_version=opset,
            input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=axes or None,
        )


def _export_dynamo(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int,
                   dynamic_batch: bool) -> None:
    _require("onnxscript", "the torch.export-based ONNX exporter")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if len(inputs) != 1:
        raise ExportError("action detectors export with the torchscript exporter only")
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    x = inputs[0].detach().requires_grad_(True)  # the exact path even when the parameters are frozen
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
    inputs = "clip [1, 3, T, H, W] + boxes [K, 5] -> logits [K, A]" if metadata.get("task") == "detection" \
        else "clip [B, 3, T, H, W] -> logits"
    model.doc_string = f"videoapp export of {metadata.get('model', '?')}: input {inputs}"
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- checks
def _torch_logits(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """The logits of the Predictor's own path (eval, no autograd) as float64."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(*inputs).double().numpy()
    finally:
        model.train(was_training)


def random_boxes(num_boxes: int, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``[num_boxes, 5]`` random boxes ``[batch_index, x1, y1, x2, y2]`` inside a ``height`` x ``width`` clip.

    Batch indices cycle over the clips; sides are 10-100 % of the clip's (pixels, float32).
    """
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = size * (0.1 + 0.9 * torch.rand((num_boxes, 2), generator=generator))
    x1y1 = (size - wh) * torch.rand((num_boxes, 2), generator=generator)
    index = (torch.arange(num_boxes) % batch).float()[:, None]
    return torch.cat([index, x1y1, x1y1 + wh], dim=1)


def _inputs(shape: tuple[int, ...], detector: bool, num_boxes: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A random clip of ``shape`` (and, for a detector, ``num_boxes`` random boxes on it)."""
    x = torch.randn(shape, generator=gen)
    if not detector:
        return (x,)
    return x, random_boxes(num_boxes, shape[0], shape[-2], shape[-1], gen)


def _compare(model: nn.Module, session: Any, batches: tuple[int, ...], shape: tuple[int, ...],
             seed: int, box_counts: tuple[int, ...] = ()) -> tuple[float, float]:
    """``(max |Δlogit|, max |logit|)`` of onnxruntime vs PyTorch on random clips of each batch size
    (a detector: one clip with each number of boxes in ``box_counts``)."""
    gen = torch.Generator().manual_seed(seed)
    diff = peak = 0.0
    runs = [(1, k) for k in box_counts] if box_counts else [(b, 0) for b in batches]
    for b, k in runs:
        inputs = _inputs((b, *shape[1:]), bool(box_counts), k, gen)
        ref = _torch_logits(model, inputs)
        feed = {INPUT_NAME: inputs[0].numpy()}
        if box_counts:
            feed[BOXES_NAME] = inputs[1].numpy()
        try:
            out = session.run([OUTPUT_NAME], feed)[0].astype(np.float64)
        except Exception as exc:
            what = f"{k} boxes" if box_counts else f"a batch of {b}"
            raise ExportError(f"onnxruntime failed on {what} ({first_line(exc)})") from None
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
    and ``S = crop_size`` (default: the model's ``pretrained_cfg``, i.e. the clip
    protocol of its weights) and returns ``logits`` ``[B, num_classes]``; ``B``
    is 1, or any size with ``dynamic_batch``. An action detector
    (``pretrained_cfg.task == "detection"``) also takes ``boxes`` ``[K, 5]``
    (``[batch_index, x1, y1, x2, y2]`` in clip pixels, any ``K``; ``B = 1``)
    and returns ``[K, num_actions]``; it needs ``opset >= 16`` (RoiAlign).
    ``metadata_props`` get the model's name, task, labels and clip protocol
    (with ``T``/``S`` as exported), then ``metadata`` on top (e.g. the
    weights' ``source`` and ``metrics``).

    The file is checked with ``onnx.checker`` and, with ``verify``, run in
    onnxruntime on random clips (batch 1; 1 and 3 with ``dynamic_batch``; a
    detector with 1 and 5 random boxes): ``max |Δlogit| <= tolerance * max |logit|``
    against PyTorch or :class:`ExportError` (and no file). ``exporter`` is
    "auto", "torchscript" or "dynamo" (see the module docstring; detectors:
    torchscript); ``opset`` the ONNX opset. The file appears atomically
    (written beside ``path``, renamed).
    """
    from videoapp.models.registry import get_pretrained_cfg

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r} (choose from {', '.join(EXPORTERS)})")
    _require("onnx", "ONNX export")
    if verify:
        _require("onnxruntime", "checking an ONNX export")
    path = Path(path)
    try:
        cfg = get_pretrained_cfg(model)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    name = cfg.model_name
    data = cfg.data_config()
    frames = int(num_frames or cfg.num_frames)
    crop = int(crop_size or cfg.crop_size)
    detector = cfg.task == "detection"
    if detector:
        if dynamic_batch:
            raise ExportError(f"{name} is an action detector: it exports one clip per run (any number of boxes); "
                              "drop --dynamic-batch")
        if opset < DETECTOR_MIN_OPSET:
            raise ExportError(f"{name} is an action detector: its RoIAlign needs opset {DETECTOR_MIN_OPSET} or later")
        if exporter == "dynamo":
            raise ExportError(f"{name} is an action detector: it exports with the torchscript exporter only")
        exporter = "torchscript"
        # Imported now, not inside the traced forward: torchvision's first import calls ops that tracing rejects.
        import torchvision.ops  # noqa: F401
    batch = 2 if dynamic_batch else 1
    shape = (batch, 3, frames, crop, crop)
    inputs = _inputs(shape, detector, 3, torch.Generator().manual_seed(seed))
    try:
        logits = _torch_logits(model, inputs)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ExportError(f"{name} cannot run {frames}x{crop}x{crop} clips ({first_line(exc)})") from None
    if logits.ndim != 2:
        raise ExportError(f"{name} returns {list(logits.shape)}, not logits [B, num_classes]: only classifiers export")
    num_classes = int(logits.shape[1])
    meta: dict[str, Any] = {
        "model": name,
        "labels": list(cfg.labels) if cfg.labels else None,
        **{k: data[k] for k in PROTOCOL_KEYS},
        "num_frames": frames,
        "crop_size": crop,
    }
    if detector:
        meta.update(task="detection", backbone=cfg.backbone, boxes=BOXES_NAME)
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
                (_export_torchscript if used == "torchscript" else _export_dynamo)(model, inputs, tmp, opset, dynamic_batch)
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
                diff, peak = _compare(model, _session(tmp), check_batches, shape, seed + 1,
                                      box_counts=(1, 5) if detector else ())
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
    """An exported ONNX model run by onnxruntime that stands in for the PyTorch model.

    A classifier: ``forward(x)``, normalised clips ``[B, 3, T, S, S]`` -> logits
    ``[B, num_classes]``; an action detector (``pretrained_cfg.task ==
    "detection"``): ``forward(x, boxes)`` with boxes ``[K, 5]`` rows
    ``[batch_index, x1, y1, x2, y2]`` in clip pixels -> logits ``[K, num_classes]``.
    Float32, on ``x``'s device (onnxruntime runs on the CPU). A fixed-batch
    graph is run one batch at a time (the last one padded; a detector clip by
    clip, each with its own boxes). Carries what :func:`videoapp.create_model`
    puts on a model, read from the file's metadata: ``pretrained_cfg`` (a
    :class:`~videoapp.models.registry.ModelConfig`: name, labels, clip
    protocol, task), plus ``num_classes``, ``batch_size`` (``None``: any) and
    the raw ``metadata``. ``num_threads`` sets onnxruntime's intra-op threads
    (default: its own choice, one per core).

    Raises :class:`ExportError` (one line) for a file onnxruntime cannot read,
    one without our metadata, or when onnxruntime is not installed.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        from videoapp.models.registry import ModelConfig

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
        self.detector = meta.get("task") == "detection"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        want_inputs = 2 if self.detector else 1
        if len(inputs) != want_inputs or len(outputs) < 1:
            what = "a clip [1, 3, T, H, W] and boxes [K, 5]" if self.detector else "one input clip [B, 3, T, H, W]"
            raise ExportError(f"{path}: expected {what}, got {len(inputs)} inputs")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.boxes_name = inputs[1].name if self.detector else None
        in_shape = inputs[0].shape
        self.batch_size = in_shape[0] if isinstance(in_shape[0], int) else None
        self.metadata = meta
        out_classes = outputs[0].shape[-1]
        labels = meta.get("labels")
        labels = [str(s) for s in labels] if isinstance(labels, list) else None
        self.num_classes = int(out_classes) if isinstance(out_classes, int) else len(labels or [])
        if labels is not None and len(labels) != self.num_classes:
            raise ExportError(f"{path}: {len(labels)} labels for {self.num_classes} logits")
        try:
            self.pretrained_cfg = ModelConfig.from_data(str(meta["model"]), meta, labels)
        except (TypeError, ValueError) as exc:
            raise ExportError(f"{path}: bad clip protocol in its metadata ({first_line(exc)})") from None
        want = [3, int(meta["num_frames"]), int(meta["crop_size"]), int(meta["crop_size"])]
        if [d if isinstance(d, int) else -1 for d in in_shape[1:]] != want:
            raise ExportError(f"{path}: input {in_shape} does not match the metadata's clip [B, {', '.join(map(str, want))}]")

    def _run(self, x: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        feed = {self.input_name: x}
        if boxes is not None:
            feed[self.boxes_name] = boxes
        return self.session.run([self.output_name], feed)[0]

    def _detect(self, arr: np.ndarray, boxes: torch.Tensor) -> np.ndarray:
        """Logits ``[K, num_classes]`` of ``boxes`` ``[K, 5]`` on clips ``arr``; one clip per run for a fixed batch."""
        rois = np.ascontiguousarray(boxes.detach().to("cpu", torch.float32).numpy())
        if self.batch_size is None or arr.shape[0] == self.batch_size:
            return self._run(arr, rois)
        out = np.zeros((rois.shape[0], self.num_classes), np.float32)
        index = rois[:, 0].astype(np.int64)
        for i in range(arr.shape[0]):
            rows = np.flatnonzero(index == i)
            if rows.size:
                mine = rois[rows].copy()
                mine[:, 0] = 0.0  # the only clip of this run
                out[rows] = self._run(arr[i:i + 1], mine)
        return out

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 3, T, S, S]`` (+ a detector's boxes ``[K, 5]``) -> logits ``[B, num_classes]`` (``[K, num_classes]``)."""
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        fixed = self.batch_size
        if self.detector:
            if boxes is None:
                raise ValueError("an action detector scores person boxes: call it as model(clips, boxes) "
                                 "(on the command line: videoapp detect)")
            out = self._detect(arr, boxes)
        elif boxes is not None:
            raise ValueError(f"{self.path.name} is a classifier: it takes clips only, no boxes")
        elif fixed is None or arr.shape[0] == fixed:
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
        kind = "actions" if self.detector else "classes"
        return (f"{self.path.name}, model={self.pretrained_cfg.model_name}, {kind}={self.num_classes}, "
                f"batch={self.batch_size or 'dynamic'}")
