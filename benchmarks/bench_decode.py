"""Decoding speed and memory: raw decord vs our VideoReader vs pytorchvideo EncodedVideo.

Run: ``python benchmarks/bench_decode.py`` (not a test; ~1-2 minutes on 2 cores).

Generates (once, cached under ``.bench/``) a 60 s 640x360 30 fps H.264 file
with textured, moving content and a keyframe every 2 s, then times, best of
``--reps`` runs, with 2 torch threads:

(a) a 16x4 clip (16 frames at stride 4) at a random start;
(b) 8 frames spread uniformly over the whole file;

each with raw decord (``decord.VideoReader`` + ``get_batch``), our
``VideoReader.get_frames`` with our samplers, and pytorchvideo
``EncodedVideo.from_path(..., decode_audio=False).get_clip`` with the PyAV
decoder and then the decord decoder. Every timing includes opening the file,
as a data loader does per sample. pytorchvideo's decord decoder calls
``decord.bridge.set_bridge("torch")`` when first imported, so it runs last.

(c) a sliding-window timeline (2 s windows, 1 s stride, 16 frames each)
over the file: ``iter_window_clips`` (one sequential pass) vs one
``get_frames`` seek per window; reports the peak number of buffered frames.

Timing: the methods of a section run in interleaved rounds (noise on this VM
hits all of them alike); "best s" is the best round, "median s" the median.
Peak RSS delta: one more call per method, the process's peak resident memory
(VmHWM, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) minus
its resident memory before. decord's own buffers make its rows vary by tens
of MB from run to run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _memory import peak_memory_mib  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

BENCH_DIR = ROOT / ".bench"
VIDEO = BENCH_DIR / "bench_60s_640x360_30fps_h264.mp4"
FPS, SECONDS, WIDTH, HEIGHT, GOP = 30, 60, 640, 360, 60


def _prefault(mb: int = 1024) -> None:
    # On a freshly booted VM the first touch of guest memory is slow (the host
    # backs pages lazily): a fresh 11 MB array can take 30 ms to fill the first
    # time and 0.3 ms after. Touch and free some memory once so every method
    # below gets warm pages, instead of whichever runs first paying for it.
    a = np.ones(mb * 1024 * 1024, np.uint8)
    del a


def time_interleaved(methods: list[tuple[str, Callable[[], object]]], reps: int) -> dict[str, list[float]]:
    """Wall times of ``reps`` rounds, each round calling every method once.

    Interleaving spreads this VM's background noise over all methods instead
    of penalising whichever happened to run during a slow spell.
    """
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(reps):
        for name, fn in methods:
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            del out
    return times


# ----------------------------------------------------------------------------------
def ensure_video() -> Path:
    if VIDEO.exists():
        return VIDEO
    from videos import write_test_video

    BENCH_DIR.mkdir(exist_ok=True)
    print(f"generating {VIDEO.relative_to(ROOT)} (one-off, ~15 s) ...", flush=True)
    tmp = VIDEO.with_suffix(".tmp.mp4")
    write_test_video(tmp, num_frames=FPS * SECONDS, fps=FPS, width=WIDTH, height=HEIGHT,
                     pattern="moving", gop=GOP)
    tmp.rename(VIDEO)
    return VIDEO


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark, print the tables; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="runs per method (best is kept)")
    ap.add_argument("--timeline-reps", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    ap.add_argument("--full-clip", action="store_true",
                    help="also time pytorchvideo get_clip(0, duration) + subsampling for (b), once: "
                         "it decodes all 1800 frames to float (measured: ~90 s, ~12 GB peak)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    import av
    import decord

    from videoapp.data.sampling import (clip_indices, iter_window_clips, sliding_windows,
                                        uniform_indices)
    from videoapp.data.video import VideoReader
    from videoapp.hardware import describe_cpu

    print(f"CPU: {describe_cpu()}", flush=True)
    path = str(ensure_video())
    _prefault()
    with VideoReader(path) as r:
        info = r.info
    n = info.num_frames
    print(f"file: {path}  {info.width}x{info.height} {info.fps:g} fps {n} frames {info.codec} "
          f"(keyframe every {GOP} frames)")
    print(f"torch threads {torch.get_num_threads()}, decord {decord.__version__}, PyAV {av.__version__}, "
          f"best of {args.reps}\n")

    rng = np.random.default_rng(0)
    clip_span = 16 * 4
    starts = [int(s) for s in rng.integers(0, n - clip_span, size=args.reps)]
    results: dict[str, list[dict]] = {}

    def cycler(seq):
        state = {"i": 0}

        def nxt():
            v = seq[state["i"] % len(seq)]
            state["i"] += 1
            return v
        return nxt

    # --- (a) 16x4 clip ------------------------------------------------------------
    def raw_decord_clip(next_start):
        def run():
            s = next_start()
            vr = decord.VideoReader(path, ctx=decord.cpu(0))
            return vr.get_batch(list(range(s, s + clip_span, 4))).asnumpy()
        return run

    def ours_clip(next_start):
        def run():
            s = next_start()
            with VideoReader(path) as r:
                return r.get_frames(clip_indices(n, 16, float(s), float(clip_span)))
        return run

    def ptv_clip(decoder, next_start):
        from pytorchvideo.data.encoded_video import EncodedVideo

        def run():
            s = next_start()
            v = EncodedVideo.from_path(path, decoder=decoder, decode_audio=False)
            clip = v.get_clip(s / FPS, (s + clip_span) / FPS)["video"]  # [C, 64, H, W] float
            # what UniformTemporalSubsample(16) does
            idx = torch.linspace(0, clip.shape[1] - 1, 16).long()
            out = clip.index_select(1, idx)
            v.close()
            return out
        return run

    # --- (b) 8 uniform frames -----------------------------------------------------
    uni = uniform_indices(n, 8)

    def raw_decord_uniform():
        vr = decord.VideoReader(path, ctx=decord.cpu(0))
        return vr.get_batch(uni.tolist()).asnumpy()

    def ours_uniform():
        with VideoReader(path) as r:
            return r.get_frames(uniform_indices(r.info.num_frames, 8))

    def ptv_uniform(decoder):
        from pytorchvideo.data.encoded_video import EncodedVideo

        def run():
            # One get_clip per frame: asking for the whole video and subsampling
            # would decode all 1800 frames into a 5 GB float tensor.
            v = EncodedVideo.from_path(path, decoder=decoder, decode_audio=False)
            frames = [v.get_clip(i / FPS, (i + 1) / FPS)["video"][:, :1] for i in uni.tolist()]
            v.close()
            return torch.cat(frames, dim=1)
        return run

    def ptv_full_clip():
        from pytorchvideo.data.encoded_video import EncodedVideo

        v = EncodedVideo.from_path(path, decoder="pyav", decode_audio=False)
        clip = v.get_clip(0, v.duration)["video"]
        out = clip.index_select(1, torch.linspace(0, clip.shape[1] - 1, 8).long())
        v.close()
        return out

    plan = [
        ("(a) 16x4 clip, random start", [
            ("raw decord get_batch", raw_decord_clip(cycler(starts))),
            ("videoapp VideoReader.get_frames", ours_clip(cycler(starts))),
            ("pytorchvideo EncodedVideo pyav", ptv_clip("pyav", cycler(starts))),
        ]),
        ("(b) 8 uniform frames over 60 s", [
            ("raw decord get_batch", raw_decord_uniform),
            ("videoapp VideoReader.get_frames", ours_uniform),
            ("pytorchvideo EncodedVideo pyav (8 get_clip)", ptv_uniform("pyav")),
        ]),
    ]
    # pytorchvideo's decord decoder flips decord's global bridge to torch on
    # import: measure it last, after everything else that uses decord.
    late = [
        ("(a) 16x4 clip, random start", ("pytorchvideo EncodedVideo decord [flips bridge]",
                                         ptv_clip("decord", cycler(starts)))),
        ("(b) 8 uniform frames over 60 s", ("pytorchvideo EncodedVideo decord (8 get_clip) [flips bridge]",
                                            ptv_uniform("decord"))),
    ]

    def run_section(section: str, methods: list, reps: int) -> None:
        ok = []
        for name, fn in methods:
            try:
                out = fn()  # warm-up: imports, page cache, and a check that it works
                del out
                ok.append((name, fn))
            except Exception as e:  # a reference that fails is reported, not fatal
                results.setdefault(section, []).append({"method": name, "error": f"{type(e).__name__}: {e}"})
        times = time_interleaved(ok, reps)
        for name, fn in ok:
            results.setdefault(section, []).append({
                "method": name, "seconds": min(times[name]), "median_s": float(np.median(times[name])),
                "peak_rss_mb": peak_memory_mib(fn)})

    for section, methods in plan:
        run_section(section, methods, args.reps)
    if args.full_clip:
        t0 = time.perf_counter()
        mem = peak_memory_mib(ptv_full_clip)
        results["(b) 8 uniform frames over 60 s"].append(
            {"method": "pytorchvideo pyav get_clip(whole video) + subsample (1 run)",
             "seconds": time.perf_counter() - t0, "peak_rss_mb": mem})

    # --- (c) sliding-window timeline -----------------------------------------------
    tl = "(c) timeline: 2 s windows, 1 s stride, 16 frames"
    windows = sliding_windows(n, float(FPS), 2.0, 1.0, 16)
    peak = {"frames": 0}

    def one_pass():
        with VideoReader(path) as r:
            it = iter_window_clips(r, windows)
            checksum = 0
            for _, clip in it:
                checksum += int(clip[0, 0, 0, 0])
            peak["frames"] = it.peak_buffered_frames
            return checksum

    def seek_per_window():
        with VideoReader(path) as r:
            return sum(int(r.get_frames(w.indices)[0, 0, 0, 0]) for w in windows)

    run_section(tl, [(f"iter_window_clips, one pass ({len(windows)} windows)", one_pass),
                     (f"get_frames per window ({len(windows)} seeks)", seek_per_window)],
                args.timeline_reps)

    bridge_before = decord.bridge._CURRENT_BRIDGE.type
    for section, (name, fn) in late:
        run_section(section, [(name, fn)], args.reps)
    bridge_after = decord.bridge._CURRENT_BRIDGE.type

    # --- report ---------------------------------------------------------------------
    for section, rows in results.items():
        print(section)
        ref = next((r["seconds"] for r in rows if "seconds" in r), None)
        print(f"  {'method':<62} {'best s':>8} {'vs first':>9} {'median s':>9} {'peak RSS +MB':>13}")
        for row in rows:
            if "error" in row:
                print(f"  {row['method']:<62} failed: {row['error'][:80]}")
                continue
            ratio = row["seconds"] / ref if ref else float("nan")
            mem = "n/a" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f}"
            med = f"{row['median_s']:.3f}" if "median_s" in row else "-"
            print(f"  {row['method']:<62} {row['seconds']:8.3f} {ratio:8.2f}x {med:>9} {mem:>13}")
        print()
    print(f"timeline: peak buffered frames in iter_window_clips = {peak['frames']} "
          f"(one window = 16 frames)")
    print(f"decord bridge before the pytorchvideo-decord rows: {bridge_before!r}, after: {bridge_after!r}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "peak_buffered_frames": peak["frames"]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
