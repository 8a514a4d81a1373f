"""Command-line front end: ``videoapp <command> ...`` (also ``python -m videoapp``).

Exit status: 0 on success, 2 on bad input (one line on stderr, never a
traceback), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from videoapp.files import atomic_write_text, first_line

PROG = "videoapp"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one sub-command per job)."""
    parser = _Parser(
        prog=PROG,
        description="Video understanding: recognise actions in your videos with MViTv2 / Hiera models.",
        epilog="Run 'videoapp COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "predict",
        help="top-k actions for whole clips and, with --window-s/--stride-s, a timeline",
        description=(
            "Predict actions in video files. Each clip is scored on several views (clips spread "
            "over the video x crops, averaged); with --window-s/--stride-s it is also scored per "
            "window, decoded in one sequential pass. Without --weights the shipped default model is used."
        ),
    )
    p.add_argument("clips", nargs="+", metavar="CLIP", help="video files (anything ffmpeg decodes: mp4, avi, mkv, webm, ...)")
    p.add_argument("--weights", metavar="W", help="weights file: ours (.safetensors), a reference checkpoint (then also --model), "
                   "or a model from 'videoapp export' (.onnx, run by onnxruntime)")
    p.add_argument("--model", metavar="NAME", help="registry name (see 'videoapp models'); needed for reference checkpoints")
    p.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="classes to report (default 5)")
    p.add_argument("--window-s", type=_positive_float, metavar="S", help="timeline window length in seconds (default: one clip span)")
    p.add_argument("--stride-s", type=_positive_float, metavar="S", help="timeline step in seconds (default: the window length)")
    p.add_argument("--clips", dest="num_clips", type=_positive_int, default=5, metavar="N", help="clips spread over the video for the whole-video score (default 5)")
    p.add_argument("--crops", type=int, choices=(1, 3), default=1, help="spatial crops per clip: 1 centre or 3 along the long side (default 1)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format (default text)")
    p.add_argument("--out", metavar="FILE", help="write the result to FILE instead of standard output")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast: about 2x faster on recent CPUs and GPUs")
    p.add_argument("--batch-size", type=_positive_int, default=4, metavar="N", help="clips per forward pass (default 4)")
    p.add_argument("-v", "--verbose", action="store_true", help="log decoding backend and model details to stderr")
    p.set_defaults(func=cmd_predict)

    m = sub.add_parser("models", help="list registered model architectures", description="List registered model architectures.")
    m.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'mvitv2*'")
    m.set_defaults(func=cmd_models)

    w = sub.add_parser("weights", help="list, import and convert weights", description="Manage weights files.")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION", parser_class=_Parser)
    wl = wsub.add_parser("list", help="show the weights in the weights folder", description="Show the weights files in the weights folder and their metadata.")
    wl.add_argument("--dir", metavar="DIR", help="folder to list (default: the shipped weights/ folder)")
    wl.set_defaults(func=cmd_weights_list)
    wi = wsub.add_parser(
        "import",
        help="convert a reference checkpoint (torchvision, SlowFast, ...) to our format",
        description="Convert a checkpoint of a reference implementation into a .safetensors file with metadata.",
    )
    wi.add_argument("src", metavar="SRC", help="checkpoint file (.pth, .pyth, .safetensors)")
    wi.add_argument("--model", required=True, metavar="NAME", help="registry name of the target model")
    wi.add_argument("--source", default="auto", help="checkpoint format (default: detected from the key names)")
    wi.add_argument("--out", required=True, metavar="FILE", help="output .safetensors path")
    wi.set_defaults(func=cmd_weights_import)
    wf = wsub.add_parser(
        "inflate",
        help="turn a 2D image checkpoint (timm, official) into a 3D video model",
        description=(
            "Inflate an image checkpoint into a video model of the same family and size: patch-stem and "
            "pooling kernels get the 2D kernel in their middle time slice (zeros elsewhere), temporal "
            "position tables start at zero, spatial tables are resized only when the crop size changes. "
            "The result reproduces the image model on a clip of identical frames; fine-tune it on video."
        ),
    )
    wf.add_argument("src", metavar="IMAGE_CKPT", help="image checkpoint (.pth, .safetensors)")
    wf.add_argument("--model", required=True, metavar="NAME", help="registry name of the video model, e.g. hiera_base_16x224")
    wf.add_argument("--num-classes", type=_positive_int, metavar="N", help="new head size (default: keep the image head)")
    wf.add_argument("--source", default="auto", help="checkpoint format (default: detected from the key names)")
    wf.add_argument("--out", required=True, metavar="FILE", help="output .safetensors path")
    wf.set_defaults(func=cmd_weights_inflate)
    w.set_defaults(func=lambda args: _help_and_fail(w))
    _add_eval_parser(sub)
    _add_export_parser(sub)
    _add_detect_parser(sub)
    _add_train_parser(sub)
    _add_serve_parser(sub)
    return parser


def _version() -> str:
    from videoapp import __version__

    return __version__


def _help_and_fail(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ---------------------------------------------------------------- predict


def _make_predictor(args: argparse.Namespace):
    from videoapp.engine.predict import Predictor
    from videoapp.models.registry import get_model_entry
    from videoapp.ui.catalog import UNTRAINED_MODEL, untrained_model
    from videoapp.weights import default_weights

    weights = args.weights
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"{weights}: no such weights file")
    if weights is None:
        weights = default_weights()
    if weights is None:
        name = args.model or UNTRAINED_MODEL
        get_model_entry(name)
        print(
            f"{PROG}: warning: no trained weights available; using an UNTRAINED {name} "
            "(random weights: the predictions are meaningless)",
            file=sys.stderr,
        )
        model = untrained_model(name)  # the same seeded fallback as the UI's
        return Predictor(model, device=args.device, bf16=args.bf16, num_clips=args.num_clips, num_crops=args.crops, batch_size=args.batch_size)
    return Predictor(
        weights, model_name=args.model, device=args.device, bf16=args.bf16,
        num_clips=args.num_clips, num_crops=args.crops, batch_size=args.batch_size,
    )


def _format_text(pred) -> str:
    lines = [f"{pred.video}  ({pred.model}, {pred.duration_s:.1f} s, {pred.views} views)"]
    width = max(len(s.label) for s in pred.top_k)
    for rank, s in enumerate(pred.top_k, 1):
        lines.append(f"  {rank}. {s.label:<{width}}  {s.score:.3f}")
    if pred.windows:
        lines.append("  timeline:")
        for w in pred.windows:
            best = ", ".join(f"{s.label} {s.score:.2f}" for s in w.top_k[:3])
            lines.append(f"    {w.start_s:7.2f}-{w.end_s:7.2f} s  {best}")
    return "\n".join(lines) + "\n"


def _format_csv(preds) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["video", "start_s", "end_s", "rank", "label", "score"])
    for pred in preds:
        for rank, s in enumerate(pred.top_k, 1):
            writer.writerow([pred.video, "", "", rank, s.label, f"{s.score:.6f}"])
        for w in pred.windows:
            for rank, s in enumerate(w.top_k, 1):
                writer.writerow([pred.video, f"{w.start_s:.3f}", f"{w.end_s:.3f}", rank, s.label, f"{s.score:.6f}"])
    return buf.getvalue()


def _write_output(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{out}: is a directory")
    if not path.parent.exists():
        raise UsageError(f"{out}: folder {path.parent} does not exist")
    atomic_write_text(path, text)


def cmd_predict(args: argparse.Namespace) -> int:
    """``videoapp predict``: see ``build_parser``."""
    from videoapp.data.video import VideoError

    predictor = _make_predictor(args)
    if args.verbose:
        print(f"{PROG}: model {predictor.model_name}, {predictor.num_frames}x{predictor.sampling_rate} frames, "
              f"{len(predictor.labels)} classes", file=sys.stderr)
    preds, failed = [], 0
    for clip in args.clips:
        try:
            preds.append(predictor.predict(clip, top_k=args.top_k, window=args.window_s, stride=args.stride_s))
        except VideoError as exc:
            failed += 1
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            continue
        if args.format == "text" and args.out is None:
            _write_output(_format_text(preds[-1]), None)
    if args.format == "json":
        payload: Any = [p.to_dict() for p in preds]
        if len(args.clips) == 1 and preds:
            payload = payload[0]
        _write_output(json.dumps(payload, indent=2) + "\n", args.out)
    elif args.format == "csv":
        _write_output(_format_csv(preds), args.out)
    elif args.out is not None:
        _write_output("".join(_format_text(p) for p in preds), args.out)
    return 2 if failed else 0


# ---------------------------------------------------------------- models / weights


def cmd_models(args: argparse.Namespace) -> int:
    """``videoapp models``: registered architectures with their clip protocol."""
    from videoapp.models.registry import get_model_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise UsageError(f"no model matches '{args.pattern}'")
    rows = []
    for name in names:
        e = get_model_entry(name)
        d = e.data
        rows.append((name, e.family, f"{d['num_frames']}x{d['sampling_rate']}", f"{d['crop_size']}px", e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    """``videoapp weights list``: the weights files of a folder and what they hold."""
    from videoapp.weights import WEIGHTS_DIR, CheckpointError, read_metadata

    folder = Path(args.dir) if args.dir else WEIGHTS_DIR
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        print(f"no weights in {folder}")
        return 0
    for f in files:
        try:
            meta = read_metadata(f)
        except CheckpointError as exc:
            print(f"{f.name}  (unreadable: {exc})")
            continue
        labels = meta.get("labels") or []
        metrics = meta.get("metrics") or {}
        extra = "  ".join(f"{k}={v}" for k, v in metrics.items()) if isinstance(metrics, dict) else ""
        print(f"{f.name}  model={meta.get('model', '?')}  classes={len(labels)}  "
              f"clip={meta.get('num_frames', '?')}x{meta.get('sampling_rate', '?')}  source={meta.get('source', '?')}  {extra}".rstrip())
    return 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    """``videoapp weights import``: reference checkpoint -> our .safetensors with metadata."""
    from videoapp.models.pretrained import import_checkpoint, metadata_for
    from videoapp.weights import save_weights

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"{args.out}: the output must end in .safetensors")
    state, report = import_checkpoint(args.src, args.model, source=args.source)
    save_weights(out, state, metadata_for(report, source=f"{report.source}:{Path(args.src).name}"))
    for note in report.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(f"wrote {out} ({args.model}, {report.num_classes} classes, from {report.source})")
    return 0


def cmd_weights_inflate(args: argparse.Namespace) -> int:
    """``videoapp weights inflate``: image checkpoint -> video model weights with metadata."""
    from videoapp.models.inflate import inflate_checkpoint
    from videoapp.models.registry import get_model_entry
    from videoapp.weights import save_weights

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"{args.out}: the output must end in .safetensors")
    state, report = inflate_checkpoint(args.src, args.model, num_classes=args.num_classes, source=args.source)
    meta = {"model": args.model, **get_model_entry(args.model).data, "source": f"inflated:{report.source}:{Path(args.src).name}"}
    save_weights(out, state, meta)
    print(
        f"wrote {out} ({args.model}, {report.num_classes} classes; {len(report.copied)} copied, "
        f"{len(report.centre_frame)} centre-frame, {len(report.zeroed)} zeroed, {len(report.resized)} resized, "
        f"{len(report.fresh)} fresh)"
    )
    return 0


# ---------------------------------------------------------------- eval

EVAL_DATASETS = ("kinetics", "kinetics400", "kinetics600", "kinetics700", "ssv2", "folder", "path_list", "ava")


def _add_eval_parser(sub) -> None:
    e = sub.add_parser(
        "eval",
        help="accuracy of weights on Kinetics / SSv2 / your folders (multi-view), or AVA frame-mAP",
        description=(
            "Evaluate weights on a labelled video set with the standard multi-view test protocol (clips spread "
            "over each video x spatial crops, softmax averaged). Writes a JSON report (top-1, top-5, mean class "
            "accuracy, per-class accuracy, top confusions, throughput, weights SHA-256), a confusion-matrix PNG "
            "and the per-video scores (JSONL, used by --resume) beside it. Missing and undecodable videos are "
            "listed, never dropped silently. Runs unchanged under 'torchrun --nproc-per-node N -m videoapp eval ...' "
            "(each process takes a shard; the report is the same). With --dataset ava it scores an AVA detections "
            "CSV against the ground truth (frame-mAP@0.5) instead."
        ),
    )
    e.add_argument("--dataset", required=True, choices=EVAL_DATASETS,
                   help="annotation format: Kinetics CSV (kinetics400/600/700 also check the official class names), "
                        "ssv2 (validation JSON), folder (one sub-folder per class), path_list ('<path> <label>' lines), "
                        "or ava (detections vs ground truth)")
    e.add_argument("--annotations", metavar="FILE",
                   help="annotation file (Kinetics CSV, SSv2 validation.json, path list; AVA ground-truth CSV); "
                        "not used with --dataset folder")
    e.add_argument("--data-root", metavar="DIR",
                   help="folder holding the videos (default: the annotation file's folder; the class folders for --dataset folder)")
    e.add_argument("--labels", metavar="FILE",
                   help="class names of the annotations: SSv2 labels.json or one name per line (default: the official "
                        "SSv2 list for ssv2; the weights' labels for path_list)")
    e.add_argument("--weights", metavar="W", help="weights: ours (.safetensors) or a reference checkpoint (then also --model)")
    e.add_argument("--model", metavar="NAME", help="registry name, needed for reference checkpoints")
    e.add_argument("--protocol", metavar="NAME",
                   help="views preset: a name from configs/eval/ (kinetics_5x1, kinetics_5x3, kinetics_hiera_5x3, "
                        "ssv2_1x3) or a YAML path (default: ssv2_1x3 for ssv2, kinetics_5x1 otherwise)")
    e.add_argument("--clips", dest="num_clips", type=_positive_int, metavar="N", help="override the preset's clips per video")
    e.add_argument("--crops", type=int, choices=(1, 3), help="override the preset's spatial crops per clip")
    e.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="views of one video per forward pass (default 8; videos are never mixed in a batch, "
                        "so a video's scores do not depend on the sharding)")
    e.add_argument("--workers", type=int, metavar="K",
                   help="decoding worker processes per process (default: half the CPU cores, at least 1; 0 decodes "
                        "in the main process)")
    e.add_argument("--out", metavar="FILE",
                   help="report JSON (default eval_report.json; with ava only written when given); the confusion "
                        "matrix PNG and the per-video scores JSONL go beside it")
    e.add_argument("--resume", action="store_true", help="continue a killed run: skip the videos already in the scores JSONL")
    e.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N videos found (a quick check)")
    e.add_argument("--strict", action="store_true", help="a missing or undecodable video is an error (exit 2)")
    e.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each process its local GPU) (default cpu)")
    e.add_argument("--bf16", action="store_true", help="bf16 autocast (about 2x faster on CPUs with AVX-512 bf16 / AMX and GPUs)")
    e.add_argument("--detections", metavar="CSV", help="ava: detections CSV (video_id,timestamp,x1,y1,x2,y2,action_id,score)")
    e.add_argument("--label-map", metavar="PBTXT", help="ava: label map (.pbtxt) of the evaluated actions")
    e.add_argument("--exclusions", metavar="CSV", help="ava: excluded keyframes CSV (video_id,timestamp)")
    e.set_defaults(func=cmd_eval)


def _need_file(path: str | None, option: str, dataset: str) -> str:
    if not path:
        raise UsageError(f"--dataset {dataset} needs {option}")
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file ({option})")
    return path


def _eval_ava(args: argparse.Namespace) -> int:
    gt = _need_file(args.annotations, "--annotations GT.csv", "ava")
    dets = _need_file(args.detections, "--detections DETS.csv", "ava")
    label_map = _need_file(args.label_map, "--label-map MAP.pbtxt", "ava")
    exclusions = _need_file(args.exclusions, "--exclusions EX.csv", "ava") if args.exclusions else None
    from videoapp.engine.ava_metrics import evaluate_ava, format_ava_table

    report = evaluate_ava(gt, dets, label_map, exclusions=exclusions)
    if args.out is not None:
        _write_output(json.dumps(report, indent=2) + "\n", args.out)
    table = format_ava_table(report)
    sys.stdout.write(table if table.endswith("\n") else table + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``videoapp eval``: see ``_add_eval_parser``."""
    if args.dataset == "ava":
        return _eval_ava(args)
    from videoapp.engine.evaluate import EvalError, evaluate, format_report

    if args.dataset != "folder" and not args.annotations:
        raise UsageError(f"--dataset {args.dataset} needs --annotations FILE")
    out = Path(args.out or "eval_report.json")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory")
    if not out.parent.exists():
        raise UsageError(f"{out}: folder {out.parent} does not exist")
    if args.weights is not None and not Path(args.weights).is_file():
        raise UsageError(f"{args.weights}: no such weights file")
    if args.weights is None:
        raise UsageError("--weights W is needed (the weights to evaluate)")
    try:
        result = evaluate(
            dataset=args.dataset, annotations=args.annotations, data_root=args.data_root, labels=args.labels,
            weights=args.weights, model_name=args.model, protocol=args.protocol, num_clips=args.num_clips,
            num_crops=args.crops, batch_size=args.batch_size, workers=args.workers, out=out, resume=args.resume,
            limit=args.limit, strict=args.strict, device=args.device, bf16=args.bf16,
        )
    except EvalError as exc:
        raise UsageError(str(exc)) from None
    if result.report is None:  # ranks other than 0
        return 0
    sys.stdout.write(format_report(result.report, out))
    if result.problems:
        print(f"{PROG}: {'error' if args.strict else 'warning'}: {result.problems_line}", file=sys.stderr)
        if args.strict:
            return 2
    return 0


# ---------------------------------------------------------------- detect


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _add_detect_parser(sub) -> None:
    d = sub.add_parser(
        "detect",
        help="per-person actions at keyframes (AVA-style): person boxes from a file or a person detector",
        description=(
            "Detect actions per person, as in AVA: for each keyframe a clip centred on it goes through an action "
            "detector (a *_ava model) that scores every person box for every action (multi-label). Person boxes "
            "come from --boxes (AVA CSV or JSON; keyframes and boxes used exactly as written) or from --detector "
            "(OpenCV's HOG people detector, offline but weak, or a torchvision detection model with your weights "
            "file) on keyframes every 1/--keyframe-fps s. Boxes are linked across keyframes into person ids. "
            "Output: the official AVA detection CSV (video_id,timestamp,x1,y1,x2,y2,action_id,score; coordinates "
            "in [0, 1]), one row per box and action scoring at least --threshold, or JSON."
        ),
    )
    d.add_argument("clips", nargs="+", metavar="CLIP", help="video files; the file name without extension is the AVA video_id")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--boxes", metavar="FILE",
                     help="person boxes: AVA CSV (video_id,timestamp,x1,y1,x2,y2[,action_id[,person_id|score[,score]]]) "
                          "or JSON (.json)")
    src.add_argument("--detector", metavar="SPEC",
                     help="find people on keyframes: 'hog' (OpenCV, no download; upright people >= 128 px tall) or "
                          "'torchvision:NAME' (e.g. torchvision:fasterrcnn_resnet50_fpn_v2, with --detector-weights)")
    d.add_argument("--detector-weights", metavar="W", help="weights file of the torchvision detector (never downloaded)")
    d.add_argument("--weights", metavar="W", help="action detector weights (.safetensors with task: detection, "
                   "or an exported detector .onnx from 'videoapp export', run by onnxruntime); default: the shipped "
                   "weights/detector.safetensors (8 generated motions, see weights/README.md)")
    d.add_argument("--model", metavar="NAME", help="registry name (e.g. mvitv2_s_16x4_ava) for weights without our metadata")
    d.add_argument("--keyframe-fps", type=_positive_float, default=1.0, metavar="F",
                   help="keyframes per second for --detector (default 1, as AVA)")
    d.add_argument("--threshold", type=_finite_float, default=0.0, metavar="T",
                   help="report actions scoring at least T (default 0: every action of every box, what the AVA "
                        "evaluation expects; e.g. 0.5 for a readable list)")
    d.add_argument("--box-threshold", type=_finite_float, default=0.8, metavar="T",
                   help="drop person boxes whose score is below T (default 0.8, as SlowFast; boxes without a score "
                        "are kept; HOG scores are SVM margins, about 0-3)")
    d.add_argument("--time-offset", type=_finite_float, default=0.0, metavar="S",
                   help="seconds subtracted from --boxes timestamps to get the video time (900 for AVA's "
                        "trimmed 15-minute clips; default 0)")
    d.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    d.add_argument("--person-ids", action="store_true", help="csv: add person_id before the score (9 columns)")
    d.add_argument("--out", metavar="FILE", help="write the result to FILE instead of standard output")
    d.add_argument("--overlay", metavar="MP4",
                   help="also write the video with boxes, person ids and the top 3 actions scoring at least "
                        "max(T, 0.5) drawn (H.264 .mp4); with several clips a folder (one <name>_overlay.mp4 each)")
    d.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    d.add_argument("--bf16", action="store_true", help="bf16 autocast: about 2x faster on recent CPUs and GPUs")
    d.add_argument("--batch-size", type=_positive_int, default=4, metavar="N", help="keyframe clips per forward pass (default 4)")
    d.add_argument("-v", "--verbose", action="store_true", help="log decoding backend and model details to stderr")
    d.set_defaults(func=cmd_detect)


def _overlay_path(overlay: str, clip: str, several: bool) -> Path:
    if several:
        return Path(overlay) / f"{Path(clip).stem}_overlay.mp4"
    return Path(overlay)


def cmd_detect(args: argparse.Namespace) -> int:
    """``videoapp detect``: see ``_add_detect_parser``."""
    from videoapp.data.ava import write_ava_csv, write_boxes_json
    from videoapp.data.video import VideoError
    from videoapp.engine.detect import (
        DetectError,
        DetectionPredictor,
        default_detector_weights,
        make_person_detector,
        read_person_boxes,
        write_overlay,
    )

    if args.boxes is None and args.detector is None:
        raise UsageError("person boxes are needed: --boxes FILE or --detector hog|torchvision:NAME")
    if args.detector_weights is not None and args.detector is None:
        raise UsageError("--detector-weights goes with --detector torchvision:NAME")
    if args.boxes is not None and not Path(args.boxes).is_file():
        raise UsageError(f"{args.boxes}: no such box file")
    several = len(args.clips) > 1
    if args.overlay is not None:
        target = Path(args.overlay)
        if several and not target.is_dir():
            raise UsageError(f"--overlay {args.overlay}: with several clips give an existing folder")
        if not several and (target.is_dir() or not target.parent.exists()):
            raise UsageError(f"--overlay {args.overlay}: not a file path in an existing folder")
    weights = args.weights
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"{weights}: no such weights file")
    if weights is None:
        weights = default_detector_weights()
    if weights is None:
        raise UsageError("the shipped detector weights/detector.safetensors is missing: pass --weights W (detection "
                         "weights of a *_ava model, e.g. from 'videoapp train')")
    predictor = DetectionPredictor(weights, model_name=args.model, device=args.device, bf16=args.bf16,
                                   batch_size=args.batch_size)
    if args.verbose:
        print(f"{PROG}: model {predictor.model_name}, {predictor.num_frames}x{predictor.sampling_rate} frames, "
              f"{len(predictor.labels)} actions", file=sys.stderr)
    rows = read_person_boxes(args.boxes) if args.boxes is not None else None
    person_detector = make_person_detector(args.detector, args.detector_weights, args.device) if rows is None else None
    results, failed = [], 0
    for clip in args.clips:
        try:
            det = predictor.detect(clip, rows, person_detector, keyframe_fps=args.keyframe_fps,
                                   box_threshold=args.box_threshold, time_offset=args.time_offset)
            if args.overlay is not None:
                write_overlay(_overlay_path(args.overlay, clip, several), det, threshold=max(args.threshold, 0.5),
                              keyframe_fps=args.keyframe_fps if rows is None else 1.0,
                              time_offset=args.time_offset if rows is not None else 0.0)
        except (VideoError, DetectError) as exc:
            failed += 1
            print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
            continue
        results.append(det)
    buf = io.StringIO()
    if args.format == "csv":
        write_ava_csv(buf, [r for det in results for r in det.rows(args.threshold)], person_ids=args.person_ids)
    else:
        label_map = results[0].label_map() if results else {}
        # Box rows first so every box is listed, with its detector score, even without actions above T.
        write_boxes_json(buf, [r for det in results for r in det.box_rows() + det.rows(args.threshold)],
                         label_map=label_map)
    _write_output(buf.getvalue(), args.out)
    return 2 if failed else 0


# ---------------------------------------------------------------- export


def _add_export_parser(sub) -> None:
    x = sub.add_parser(
        "export",
        help="export weights to ONNX, for onnxruntime or 'videoapp predict --weights model.onnx'",
        description=(
            "Export a model and its weights to ONNX: one input 'clip' float32 [B, 3, T, S, S] (normalised RGB), "
            "one output 'logits' [B, classes]. The file's metadata holds the labels and the clip protocol "
            "(frames, frame stride, crop, mean/std, channel order, sampling), so 'videoapp predict --weights "
            "model.onnx' samples and preprocesses as with the weights, through onnxruntime. Every export is "
            "checked with onnx.checker and run in onnxruntime against PyTorch (max |logit difference| <= "
            "1e-4 x max |logit|, or no file is written). An action detector (*_ava) gets a second input 'boxes' "
            "[K, 5] (batch_index, x1, y1, x2, y2 in clip pixels) and outputs [K, actions]; run it with "
            "'videoapp detect --weights model.onnx'."
        ),
    )
    x.add_argument("weights", metavar="WEIGHTS", help="weights file: ours (.safetensors) or a reference checkpoint (then also --model)")
    x.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default onnx)")
    x.add_argument("--out", metavar="FILE", help="output file (default: the weights' name with .onnx, in the current folder)")
    x.add_argument("--model", metavar="NAME", help="registry name (see 'videoapp models'); needed for reference checkpoints")
    x.add_argument("--frames", type=_positive_int, metavar="T", help="frames per clip of the exported graph (default: the weights')")
    x.add_argument("--crop", type=_positive_int, metavar="S", help="crop size in pixels of the exported graph (default: the weights'; "
                   "Hiera takes only its own size)")
    x.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: batch 1; predict handles both)")
    x.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                   help="torch.onnx exporter: TorchScript tracing (fast), torch.export (slow, symbolic batch), or auto: "
                        "tracing, then torch.export if a traced dynamic batch fails the check (default auto)")
    x.add_argument("--opset", type=_positive_int, metavar="N", help="ONNX opset (default 18)")
    x.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """``videoapp export``: see ``_add_export_parser``."""
    from videoapp.engine.predict import resolve_weights_model
    from videoapp.models.export import DEFAULT_OPSET, export_onnx
    from videoapp.models import create_model
    from videoapp.weights import read_metadata

    src = Path(args.weights)
    if not src.is_file():
        raise UsageError(f"{args.weights}: no such weights file")
    if src.suffix.lower() == ".onnx":
        raise UsageError(f"{args.weights}: already an ONNX model")
    out = Path(args.out) if args.out else Path(src.stem + ".onnx")
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"{out}: the output must end in .onnx")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: folder {out.parent} does not exist")
    name = resolve_weights_model(src, args.model)
    model = create_model(name, pretrained=str(src))
    extra: dict[str, Any] = {"weights": src.name}
    if src.suffix == ".safetensors":
        meta = read_metadata(src)
        extra.update({k: meta[k] for k in ("source", "metrics") if k in meta})
    if sys.stderr.isatty():
        print(f"{PROG}: exporting {name} (large models take a minute or more)...", file=sys.stderr, flush=True)
    report = export_onnx(model, out, num_frames=args.frames, crop_size=args.crop, dynamic_batch=args.dynamic_batch,
                         exporter=args.exporter, opset=args.opset or DEFAULT_OPSET, metadata=extra)
    shape = ["B" if d < 0 else str(d) for d in report.input_shape]
    detector = model.pretrained_cfg.task == "detection"
    inputs = f"input [{', '.join(shape)}]" + (" + boxes [K, 5]" if detector else "")
    print(f"wrote {out} ({name}, {report.num_classes} {'actions' if detector else 'classes'}, {inputs}, {report.exporter} exporter, "
          f"opset {report.opset}; onnxruntime vs PyTorch: max |Δlogit| = {report.relative_diff:.1e} x max |logit|)")
    return 0


# ---------------------------------------------------------------- train


def _add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train or fine-tune a model from a YAML config (also under torchrun)",
        description=(
            "Train or fine-tune a model as a YAML config describes (see configs/train/). Writes "
            "checkpoint.pt every epoch, log.jsonl, curves.png and model.safetensors into train.out_dir. "
            "Runs unchanged under 'torchrun --nproc-per-node N -m videoapp train CONFIG'."
        ),
    )
    t.add_argument("config", metavar="CONFIG", help="YAML config file, e.g. configs/train/camera_mvitv2_xxs.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 --set data.batch_size=16 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoint.pt (if present)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``videoapp train``: see ``_add_train_parser``."""
    from videoapp.config import dump_config, load_config
    from videoapp.data.datasets import DatasetError

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    from videoapp.engine.train import train

    logging.getLogger("videoapp").setLevel(logging.INFO)  # pool preparation and one line per epoch
    try:
        result = train(cfg, resume=args.resume, config_name=args.config)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    if result.rank == 0:
        last = result.history[-1] if result.history else {}
        acc = f", val top-1 {100 * last['val_top1']:.1f}%" if "val_top1" in last else ""
        print(f"trained {cfg.model.name}: {result.epochs_done} epochs, {result.step} steps in "
              f"{result.time_s:.0f} s{acc}; weights {result.weights}"
              + (f" (also {cfg.train.export})" if cfg.train.export else ""))
    return 0


# ---------------------------------------------------------------- serve


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {text}")
    return value


def _add_serve_parser(sub) -> None:
    s = sub.add_parser(
        "serve",
        help="start the web UI: predict, label clips, export, fine-tune (open it in a browser)",
        description=(
            "Serve the web UI (Gradio) until Ctrl-C. Pages: Predict (upload clips, top-k labels, timeline, "
            "result JSON), Label (a queue of the uploaded clips with the model's suggestions), Dataset "
            "(counts, export/import, fine-tune on your labels). Clips and labels are kept in --data-dir. "
            "Only this machine can connect unless --host says otherwise."
        ),
    )
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network "
                        "interface, then use --auth)")
    s.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    s.add_argument("--data-dir", metavar="DIR",
                   help="folder of the label store: clips, labels.db, exports, fine-tuned models "
                        "(default $VIDEOAPP_DATA_DIR, else $XDG_DATA_HOME/videoapp, else ~/.local/share/videoapp)")
    s.add_argument("--auth", metavar="USER:PASSWORD",
                   help="require this login (default $VIDEOAPP_AUTH if set; the user name is recorded with labels)")
    s.add_argument("--max-upload-mb", type=_positive_float, default=200.0, metavar="N",
                   help="largest accepted upload in MB (default 200)")
    s.add_argument("--weights", metavar="W",
                   help="weights selected when the page opens (default: the shipped default model)")
    s.set_defaults(func=cmd_serve)


def _parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise UsageError("--auth must be USER:PASSWORD with both parts non-empty")
    return user.strip(), password


def cmd_serve(args: argparse.Namespace) -> int:
    """``videoapp serve``: see ``_add_serve_parser``."""
    import socket

    from videoapp.store import default_data_dir

    auth_text = args.auth if args.auth is not None else os.environ.get("VIDEOAPP_AUTH") or None
    auth = _parse_auth(auth_text) if auth_text is not None else None
    if args.weights is not None:
        from videoapp.weights import read_metadata

        path = Path(args.weights)
        if not path.is_file():
            raise UsageError(f"{args.weights}: no such weights file")
        if path.suffix != ".safetensors":
            raise UsageError(f"{args.weights}: the web UI takes our .safetensors weights "
                             "(convert others with 'videoapp weights import')")
        read_metadata(path)  # CheckpointError (one line, exit 2) when unreadable
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{data_dir}: cannot create the data folder ({exc.strerror or exc})") from None
    if not os.access(data_dir, os.W_OK):
        raise UsageError(f"{data_dir}: the data folder is not writable")
    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {args.host}: unknown address ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe_sock:
        probe_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_sock.bind(addr)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    loopback = args.host in ("localhost", "::1") or args.host.startswith("127.")
    if not loopback and auth is None:
        print(f"{PROG}: warning: listening on {args.host} without --auth: anyone who can reach this machine "
              "can use the app and its data", file=sys.stderr)
    from videoapp.ui.app import serve

    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{PROG}: web UI on http://{shown}:{args.port}  (data: {data_dir}; Ctrl-C stops)", flush=True)
    serve(data_dir, host=args.host, port=args.port, auth=auth, max_upload_mb=args.max_upload_mb,
          weights=args.weights, quiet=True)
    return 0


# ---------------------------------------------------------------- entry point


def _warn_if_bf16_emulated(args: argparse.Namespace) -> None:
    """One warning line when ``--bf16`` asks for bf16 on a CPU that only emulates it."""
    from videoapp.hardware import bf16_kind

    if getattr(args, "bf16", False) and str(getattr(args, "device", "cpu")) == "cpu" and bf16_kind() == "emulated":
        print(f"{PROG}: warning: --bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there and "
              "usually slower than float32", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format=f"{PROG}: %(message)s",
    )
    from videoapp.data.video import VideoError
    from videoapp.models.registry import UnknownModelError
    from videoapp.weights import CheckpointError

    _warn_if_bf16_emulated(args)
    try:
        return int(args.func(args) or 0)
    except (UsageError, VideoError, CheckpointError, UnknownModelError, ValueError) as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
