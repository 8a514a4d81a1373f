"""onnxruntime vs our PyTorch path: MViTv2-S and Hiera-B exported with ``videoapp export``'s code.

Run: ``python benchmarks/bench_onnx.py [--reps 3] [--threads 2]`` (not a test;
several minutes on 2 cores: each model is exported, which takes 0.5-5 minutes
depending on how busy the CPU is, then timed).

Each model (``mvitv2_s_16x4``, ``hiera_base_16x224``) gets seeded random
weights and is exported by :func:`videoapp.models.export.export_onnx` (batch
1, its default clip: 16 x 224 x 224) into ``.bench/``. Both runtimes see the
same random ``1 x 3 x 16 x 224 x 224`` clip with the same thread count
(``torch.set_num_threads`` / onnxruntime's ``intra_op_num_threads``, one
inter-op thread), in float32; PyTorch under ``torch.inference_mode`` (its
fast inference path), onnxruntime with its default graph optimisations.

Timing: one warm-up call each, then ``--reps`` rounds that alternate the two
(noise on a shared VM hits both alike); "best s" is the best round. "ratio"
is PyTorch best / onnxruntime best (> 1: onnxruntime is faster). "max rel
diff" is ``max |onnx - torch| / max |torch|`` over the logits. "peak MiB" is
the extra resident memory at the peak of one more call (Linux only).

The CPU line comes first: timings mean little without it (bf16 and AVX-512
differ between the project's machines); compare ratios from one run only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _memory import peak_memory_mib  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from videoapp.models.export import export_onnx  # noqa: E402
from videoapp.models import create_model  # noqa: E402
from videoapp.hardware import describe_cpu  # noqa: E402

BENCH_DIR = ROOT / ".bench"
MODELS = ("mvitv2_s_16x4", "hiera_base_16x224")


def main(argv: Optional[list[str]] = None) -> int:
    """Export, time and print one row per model and runtime; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated registry names (default {','.join(MODELS)})")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    print(f"CPU: {describe_cpu()}", flush=True)
    torch.set_num_threads(args.threads)
    BENCH_DIR.mkdir(exist_ok=True)
    header = f"{'model':20s} {'runtime':12s} {'best s':>8s} {'median s':>9s} {'ratio':>7s} {'max rel diff':>13s} {'peak MiB':>9s}"
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name).eval()
        t0 = time.perf_counter()
        report = export_onnx(model, BENCH_DIR / f"{name}.onnx")
        print(f"exported {name} in {time.perf_counter() - t0:.0f} s ({report.exporter}, "
              f"check {report.relative_diff:.1e})", flush=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
        x = torch.randn(report.input_shape, generator=torch.Generator().manual_seed(0))
        feed = {"clip": x.numpy()}

        def run_torch() -> np.ndarray:
            with torch.inference_mode():
                return model(x).numpy()

        def run_onnx() -> np.ndarray:
            return session.run(["logits"], feed)[0]

        calls: dict[str, Callable[[], np.ndarray]] = {"pytorch": run_torch, "onnxruntime": run_onnx}
        logits = {k: fn() for k, fn in calls.items()}  # warm-up
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.reps):
            for k, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        memory = {k: peak_memory_mib(fn) for k, fn in calls.items()}
        ref = logits["pytorch"]
        for k, ts in times.items():
            diff = float(np.abs(logits[k] - ref).max() / np.abs(ref).max())
            ratio = min(times["pytorch"]) / min(ts)
            mem = memory[k]
            mem_s = f"{mem:9.0f}" if mem is not None else f"{'-':>9s}"
            rows.append(f"{name:20s} {k:12s} {min(ts):8.3f} {statistics.median(ts):9.3f} {ratio:6.2f}x {diff:13.1e} {mem_s}")
        del session, model
    print(f"forward of one 1x3x16x224x224 clip, float32, {args.threads} threads, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, best/median of {args.reps} after 1 warm-up")
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
