"""Speed, compute and memory of the video Twins beside MViTv2-S and Hiera-B, family by family.

Run: ``python benchmarks/bench_twins.py [--reps 3] [--threads 2] [--json out.json]``
(not a test; 2-4 minutes on 2 cores, more when the CPU is shared).

All four models (``twins_svt_s_16x224``, ``twins_pcpvt_s_16x224``,
``mvitv2_s_16x4``, ``hiera_base_16x224``) get their own random initialisation
(seed 0; speed does not depend on the values) and the same random clip
``[1, 3, 16, 224, 224]``, float32, in ``torch.inference_mode``:

- "GFLOPs": floating-point operations of one forward counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; matmuls,
  convolutions and attention, not the element-wise work; the CPU flash
  attention kernel, which torch does not count, gets torch's SDPA formula);
- "best s" / "median s": one warm-up call per model, then ``--reps`` rounds in
  which the models alternate (noise on a shared VM hits all alike);
- "GFLOP/s": GFLOPs / best s, how close each family runs to the machine's
  matmul rate;
- "vs MViTv2-S": MViTv2-S's best time over the model's (> 1: faster);
- "peak MiB": extra resident memory at the peak of one more call
  (``benchmarks/_memory.py``; ``-`` where it cannot be measured).

The header prints the CPU (``videoapp.hardware.describe_cpu``: torch's CPU
capability, the avx2 / avx512f / avx512_bf16 / amx_bf16 flags) and the load
average: compare ratios from one run, never times across machines.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _memory import peak_memory_mib  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from videoapp.hardware import describe_cpu, load_average  # noqa: E402
from videoapp.models import create_model  # noqa: E402

MODELS = [
    ("Twins-SVT-S", "twins_svt_s_16x224"),
    ("Twins-PCPVT-S", "twins_pcpvt_s_16x224"),
    ("MViTv2-S", "mvitv2_s_16x4"),
    ("Hiera-B", "hiera_base_16x224"),
]
BASELINE = "MViTv2-S"


def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one ``model(x)`` in GFLOP, as ``FlopCounterMode`` counts them.

    torch has no formula for the CPU flash-attention kernel (it counts 0), so
    it gets the one torch uses for the GPU SDPA kernels (two batched matmuls).
    """
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def call(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark and print the table; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    models = {}
    for label, name in MODELS:
        torch.manual_seed(0)
        models[label] = create_model(name).eval()
    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0))
    load = load_average()

    gflops = {label: count_gflops(model, x) for label, model in models.items()}
    calls = {label: call(model, x) for label, model in models.items()}
    for fn in calls.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(args.reps):
        for label, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    memory = {label: peak_memory_mib(fn) for label, fn in calls.items()}
    load_after = load_average()

    print(f"Video models, fp32 forward, input {tuple(x.shape)}, {args.threads} threads, torch {torch.__version__}, "
          f"{describe_cpu()}; best/median of {args.reps} after 1 warm-up; load average {load:.2f} before, "
          f"{load_after:.2f} after (above ~2 the CPU was shared and times are inflated)")
    header = (f"{'model':14s} {'params M':>8s} {'GFLOPs':>8s} {'best s':>8s} {'median s':>9s} {'GFLOP/s':>8s} "
              f"{'vs ' + BASELINE:>12s} {'peak MiB':>9s}")
    print(header)
    print("-" * len(header))
    rows = []
    base = min(times[BASELINE])
    for label, name in MODELS:
        best, median = min(times[label]), statistics.median(times[label])
        params = sum(p.numel() for p in models[label].parameters()) / 1e6
        mem = memory[label]
        mem_s = f"{mem:9.0f}" if mem is not None else f"{'-':>9s}"
        print(f"{label:14s} {params:8.1f} {gflops[label]:8.1f} {best:8.3f} {median:9.3f} {gflops[label] / best:8.1f} "
              f"{base / best:11.2f}x {mem_s}")
        rows.append(dict(model=name, params_m=params, gflops=gflops[label], best_s=best, median_s=median,
                         gflop_per_s=gflops[label] / best, speedup_vs_mvitv2_s=base / best, peak_mib=mem))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpu": describe_cpu(), "threads": args.threads,
                                         "load_before": load, "load_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
