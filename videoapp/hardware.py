"""What the CPU can do for bf16: one reading of ``/proc/cpuinfo`` for the package and its benchmarks.

This module sits at the bottom of the package's layers: it imports no other
``videoapp`` module, so anything may use it (training picks its bf16 default
from :func:`bf16_kind`; every benchmark prints :func:`describe_cpu` in its
header, because bf16 timings mean nothing without knowing which kind of CPU
produced them). torch is imported only inside :func:`describe_cpu`.

Only x86 flags are read (the ``flags`` line of Linux's ``/proc/cpuinfo``);
elsewhere (macOS, Windows, ARM's ``Features`` line) no flag is found and bf16
counts as emulated, the safe answer for defaults.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal, Optional

CPUINFO = Path("/proc/cpuinfo")
# The flags that decide bf16 and fp32 matmul speed, in the order the header prints them.
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

Bf16Kind = Literal["amx", "avx512_bf16", "emulated"]


def _read(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, or a sandbox without /proc
        return ""


def parse_cpu_flags(text: str) -> set[str]:
    """The feature flags in the first ``flags`` line of ``/proc/cpuinfo`` text (empty set if none)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_flags(path: str | os.PathLike = CPUINFO) -> set[str]:
    """The x86 feature flags of the first CPU, e.g. ``{"avx2", "avx512_bf16", ...}``.

    ``path``: a ``/proc/cpuinfo`` file (default the machine's). An empty set
    where the file is missing or has no ``flags`` line.
    """
    return parse_cpu_flags(_read(path))


def bf16_kind(flags: Optional[set[str]] = None) -> Bf16Kind:
    """How bf16 matmuls run on this CPU: ``"amx"`` (AMX tiles, the fastest),
    ``"avx512_bf16"`` (native bf16 dot products, no AMX, e.g. AMD Zen 4/5) or
    ``"emulated"`` (AVX2/AVX-512F only: bf16 is converted to fp32 and back,
    usually slower than plain fp32).

    ``flags``: as :func:`cpu_flags` returns them (default this machine's).
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "emulated"


def _model_name(text: str) -> str:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def describe_cpu(path: str | os.PathLike = CPUINFO) -> str:
    """One line for benchmark headers: CPU model, torch's CPU capability, the
    bf16-relevant flags and the bf16 kind, e.g.
    ``"Intel(R) Xeon(R) Processor; torch AVX512; flags avx2 avx512f avx512_bf16 amx_bf16; bf16 amx"``.

    ``path``: a ``/proc/cpuinfo`` file (default the machine's).
    """
    import torch  # lazily: reading flags must not cost a torch import

    text = _read(path)
    flags = parse_cpu_flags(text)
    shown = " ".join(f for f in SHOWN_FLAGS if f in flags) or "?"
    kind = bf16_kind(flags)
    note = " (bf16 timings say nothing about native bf16)" if kind == "emulated" else ""
    return (f"{_model_name(text)}; torch {torch.backends.cpu.get_cpu_capability()}; "
            f"flags {shown}; bf16 {kind}{note}")
