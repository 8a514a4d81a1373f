"""Timeline memory on long videos: peak resident memory of ``Predictor.predict`` with windows.

Run: ``python benchmarks/bench_timeline_memory.py`` (part of ``make bench``; the
first run generates a 10-minute 1080p H.264 file into ``.bench/``, ~2.5 min on
2 busy cores; later runs reuse it; the two measurements then take ~10 min).
``--seconds 60`` measures a 1-minute 1080p file instead (generated the same
way), ``--video FILE`` any file.

Each measurement runs in a fresh subprocess (``--worker``), because peak RSS
(``VmHWM``) only ever grows and glibc keeps freed arenas: in one process the
second method would inherit the first one's heap. The worker:

1. reads ``VmRSS`` after ``import torch`` (the "torch" baseline: the issue's
   bound is stated over torch's own import);
2. loads the shipped default model and runs it once on a dummy clip (the
   "model" baseline: one-time allocations of the first forward pass);
3. trims the heap, restarts ``VmHWM`` (``/proc/self/clear_refs``) and runs
   ``Predictor.predict(video, window=3, stride=3)`` (the CLI's
   ``videoapp predict VIDEO --window-s 3 --stride-s 3``);
4. prints JSON: peak RSS over each baseline (MiB), wall seconds, windows.

Methods: the sequential pass with PyAV (what ``VideoReader`` does for a
timeline) and with decord (``iter_frames`` forced onto decord, the behaviour
before; decord's threads interleaved with the model's forward passes grow the
heap). The bound we keep: PyAV's peak over torch's import under 300 MiB for
any length and for 1080p (also guarded by ``tests/test_timeline_memory.py``);
the last line says whether it holds (peak, bound, their ratio). The header
prints the CPU (``videoapp.hardware.describe_cpu``), its cores and the load
average: peaks depend little on load, times a lot.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

BENCH_DIR = ROOT / ".bench"
LONG_SECONDS, LONG_FPS, LONG_W, LONG_H = 600, 30, 1920, 1080
WINDOW_S = STRIDE_S = 3.0
BOUND_MIB = 300.0


def long_video(seconds: int = LONG_SECONDS) -> Path:
    """The generated 1080p file of ``seconds`` in ``.bench/`` (its name says its size)."""
    return BENCH_DIR / f"timeline_{seconds}s_{LONG_W}x{LONG_H}_{LONG_FPS}fps_h264.mp4"


def generate_cheap_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """Write an H.264 mp4 fast: a scrolling gradient with a moving inverted square, yuv420p, ultrafast.

    Frames are built directly in YUV (grey chroma), so making them costs a
    roll of one plane; x264's ultrafast preset at CRF 30 with a keyframe every
    2 s keeps encoding near 60 fps at 1080p on one core. Written to a temporary
    name and renamed, so an interrupted run leaves no half file behind.
    """
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    n = int(round(seconds * fps))
    container = av.open(str(tmp), "w")
    stream = container.add_stream("libx264", rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "30", "g": str(2 * fps)}
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx * 255 // width + yy * 128 // height) % 256).astype(np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes, stacked as PyAV wants
    side = max(8, min(width, height) // 5)
    for i in range(n):
        y = np.roll(base, 4 * i, axis=1)
        bx, by = (i * 7) % (width - side), (i * 3) % (height - side)
        y[by:by + side, bx:bx + side] = 255 - y[by:by + side, bx:bx + side]
        frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    tmp.rename(path)
    return path


# ----------------------------------------------------------------------------------
# Worker: one measurement in this (fresh) process
# ----------------------------------------------------------------------------------
def worker(video: str, sequential: str, window_s: float, stride_s: float, threads: int = 0) -> dict:
    """Measure one timeline prediction; returns the JSON row (MiB, seconds). ``threads``: torch threads (0: default)."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from _memory import proc_status_kib, reset_peak_rss

    import torch

    rss_torch = proc_status_kib("VmRSS")
    if threads > 0:
        torch.set_num_threads(threads)
    import numpy as np

    from videoapp.data.video import VideoReader
    from videoapp.engine.predict import Predictor
    from videoapp.weights import default_weights

    if sequential == "decord":
        # The pass as it was before: decord's chunked get_batch for iter_frames.
        VideoReader._sequential_backend = lambda self: None  # type: ignore[method-assign]
    weights = default_weights()
    if weights is None:
        raise SystemExit("no shipped default weights (weights/default.safetensors)")
    predictor = Predictor(weights)
    side = predictor.transform.crop_size
    dummy = np.zeros((predictor.num_frames, side, side, 3), np.uint8)
    predictor.scores([dummy])  # first forward pass: one-time allocations belong to the baseline
    reset_peak_rss()
    rss_model = proc_status_kib("VmRSS")
    t0 = time.perf_counter()
    pred = predictor.predict(video, window=window_s, stride=stride_s, progress=False)
    seconds = time.perf_counter() - t0
    peak = proc_status_kib("VmHWM")
    if rss_torch is None or rss_model is None or peak is None:
        raise SystemExit("/proc/self/status has no VmRSS/VmHWM here")
    return {"sequential": sequential, "windows": len(pred.windows), "seconds": seconds,
            "torch_threads": torch.get_num_threads(),
            "model_over_torch_mib": (rss_model - rss_torch) / 1024,
            "peak_over_torch_mib": (peak - rss_torch) / 1024,
            "peak_over_model_mib": (peak - rss_model) / 1024}


def measure(video: str | os.PathLike, sequential: str = "pyav", window_s: float = WINDOW_S,
            stride_s: float = STRIDE_S, timeout: Optional[float] = None, threads: int = 0) -> dict:
    """Run :func:`worker` in a fresh Python process and return its row (raises on failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", os.fspath(video),
           "--sequential", sequential, "--window-s", str(window_s), "--stride-s", str(stride_s),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"worker failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[list[str]] = None) -> int:
    """Generate the long file if needed, measure both sequential backends, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", metavar="VIDEO", help=argparse.SUPPRESS)
    ap.add_argument("--sequential", choices=("pyav", "decord"), default="pyav", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--window-s", type=float, default=WINDOW_S)
    ap.add_argument("--stride-s", type=float, default=STRIDE_S)
    ap.add_argument("--video", type=Path, default=None, help="measure this file instead of the generated 1080p one")
    ap.add_argument("--seconds", type=int, default=LONG_SECONDS,
                    help=f"length of the generated 1080p file (default {LONG_SECONDS}: 10 minutes)")
    ap.add_argument("--methods", default="decord,pyav", help="comma-separated: decord, pyav")
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sequential, args.window_s, args.stride_s, args.threads)))
        return 0

    sys.path.insert(0, str(ROOT))
    from videoapp.hardware import describe_cpu, load_average

    load = load_average()
    print(f"cpu: {describe_cpu()}, {os.cpu_count()} cores, load average {load:.2f}", flush=True)
    video = args.video
    if video is None:
        video = long_video(args.seconds)
        if not video.exists():
            print(f"generating {video.relative_to(ROOT)} ({args.seconds} s {LONG_W}x{LONG_H} "
                  f"{LONG_FPS} fps, one-off) ...", flush=True)
            t0 = time.perf_counter()
            generate_cheap_video(video, args.seconds, LONG_FPS, LONG_W, LONG_H)
            print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"file: {video} ({video.stat().st_size / 2**20:.1f} MiB), windows {args.window_s:g} s "
          f"every {args.stride_s:g} s, shipped default model; each row a fresh process\n", flush=True)
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        row = measure(video, method, args.window_s, args.stride_s)
        rows.append(row)
        print(f"  {method:>7}-sequential: {row['seconds']:7.1f} s, {row['windows']} windows, peak RSS "
              f"+{row['peak_over_model_mib']:.0f} MiB over the loaded model, "
              f"+{row['peak_over_torch_mib']:.0f} MiB over torch's import", flush=True)
    by = {r["sequential"]: r for r in rows}
    if "decord" in by and "pyav" in by:
        print(f"\ndecode+predict time decord/PyAV: {by['decord']['seconds'] / by['pyav']['seconds']:.2f}x; "
              f"peak over the model decord/PyAV: {by['decord']['peak_over_model_mib']:.0f} / "
              f"{by['pyav']['peak_over_model_mib']:.0f} MiB")
    if "pyav" in by:
        peak = by["pyav"]["peak_over_torch_mib"]
        ok = peak < BOUND_MIB
        print(f"bound: PyAV timeline peak over torch's import {peak:.0f} MiB {'<' if ok else '>='} "
              f"{BOUND_MIB:.0f} MiB ({peak / BOUND_MIB:.2f}x the bound): {'HOLDS' if ok else 'EXCEEDED'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
