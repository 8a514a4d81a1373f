"""Speed of our ``hiera_base_16x224`` against the official hiera-transformer model.

Run: ``python benchmarks/bench_hiera.py [--reps 3] [--json out.json]`` (not a
test; about a minute on 2 cores, more when the CPU is shared).

Both models hold the same random weights (the official model's, copied
through our converter) and see the same random ``1 x 3 x 16 x 224 x 224``
input, with 2 torch threads, in ``torch.inference_mode``:

- fp32, and bf16 ``torch.autocast("cpu")`` (both models under the same autocast);
- one warm-up call per model and mode, then ``--reps`` rounds in which the
  two models alternate (noise on a shared VM hits both alike); "best s" is
  the best round;
- "ratio" is official / ours (> 1: ours is faster);
- "max rel diff" is ``max |ours - official| / max |official|`` over the logits
  (before the official head's softmax) in that mode; the bf16 row also shows
  ours in bf16 against the official fp32 logits.

The header prints the CPU's bf16 kind (``videoapp.hardware.describe_cpu``): on
an AVX2-only CPU bf16 is emulated and its row says nothing about native bf16.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from videoapp.models.hiera import convert_official  # noqa: E402
from videoapp.hardware import describe_cpu, load_average  # noqa: E402
from videoapp.models import create_model  # noqa: E402

NAME = "hiera_base_16x224"


def build_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(official, ours) in eval mode with identical random weights; the official returns pre-softmax logits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hiera imports timm.models.layers (deprecated path)
        import hiera

        torch.manual_seed(0)
        official = getattr(hiera, NAME)(pretrained=False).eval()
    official.head.act_func = lambda x: x  # compare logits, not softmax outputs
    with torch.device("meta"):
        ours = create_model(NAME)
    ours.load_state_dict(convert_official(official.state_dict()), strict=True, assign=True)
    return official, ours.eval()


def time_call(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed rounds per mode (best is reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(2)
    official, ours = build_models()
    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    load = load_average()
    print(f"{NAME}, input {tuple(x.shape)}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average before {load:.2f}")
    print(f"CPU: {describe_cpu()}")

    rows = []
    reference_fp32 = None
    for mode in ("fp32", "bf16"):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "bf16" else nullcontext
        best = {"official": float("inf"), "ours": float("inf")}
        outputs: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for rep in range(args.reps + 1):  # round 0 is the warm-up
                for label, model in (("official", official), ("ours", ours)):
                    with ctx():
                        seconds, out = time_call(lambda: model(x))
                    outputs[label] = out.float()
                    if rep > 0:
                        best[label] = min(best[label], seconds)
        ref, got = outputs["official"], outputs["ours"]
        diff = ((got - ref).abs().max() / ref.abs().max()).item()
        if mode == "fp32":
            reference_fp32 = ref
        row = dict(mode=mode, official_s=best["official"], ours_s=best["ours"],
                   ratio=best["official"] / best["ours"], max_rel_diff=diff,
                   same_top1=bool(got.argmax() == ref.argmax()))
        if mode == "bf16" and reference_fp32 is not None:
            row["max_rel_diff_vs_fp32"] = ((got - reference_fp32).abs().max() / reference_fp32.abs().max()).item()
        rows.append(row)

    print(f"\n{'mode':<6} {'official s':>11} {'ours s':>8} {'ratio':>7} {'max rel diff':>13}  notes")
    for r in rows:
        notes = "same top-1" if r["same_top1"] else "top-1 differs"
        if "max_rel_diff_vs_fp32" in r:
            notes += f"; ours bf16 vs official fp32 {r['max_rel_diff_vs_fp32']:.1e}"
        print(f"{r['mode']:<6} {r['official_s']:>11.3f} {r['ours_s']:>8.3f} {r['ratio']:>6.2f}x {r['max_rel_diff']:>13.1e}  "
              f"{notes}")
    load_after = load_average()
    print(f"\nload average after {load_after:.2f} (above ~2 the CPU was shared and timings are inflated)")
    if args.json:
        args.json.write_text(json.dumps({"model": NAME, "cpu": describe_cpu(), "rows": rows, "load_before": load,
                                         "load_after": load_after}, indent=2))


if __name__ == "__main__":
    main()
