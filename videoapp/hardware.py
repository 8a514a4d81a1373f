"""What the CPU can do for bf16: one reading of ``/proc/cpuinfo`` for the package and its benchmarks.

This module sits at the bottom of the package's layers: it imports no other
``videoapp`` module, so anything may use it (training picks its bf16 default
from :func:`bf16_kind`; every benchmark prints :func:`describe_cpu` in its
header, because bf16 timings mean nothing without knowing which kind of CPU
produced them). torch is imported only inside :func:`describe_cpu`.

Only x86 flags are read (the ``flags`` line of Linux's ``/proc/cpuinfo``);
elsewhere (macOS, Windows, ARM's ``Features`` line) no flag is found and bf16
counts as emulated, the safe answer for defaults.

oneDNN, which runs torch's bf16 matmuls and convolutions on CPU, can be held
below what the CPU has with ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX512_CORE_BF16``
switches AMX off on an AMX machine, the way to time the AVX512-BF16 path
there); the bf16 kind follows that cap and :func:`describe_cpu` names it.
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
_KIND_RANK = {"emulated": 0, "avx512_bf16": 1, "amx": 2}
# The environment variables oneDNN reads for its ISA cap (the second is its older name).
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


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


def isa_cap(environ: Optional[dict[str, str]] = None) -> str:
    """oneDNN's ISA cap from ``environ`` (default ``os.environ``): ``ONEDNN_MAX_CPU_ISA``
    or the older ``DNNL_MAX_CPU_ISA``, upper-cased; ``""`` when neither is set (no cap)."""
    environ = os.environ if environ is None else environ
    for name in ISA_CAP_VARIABLES:
        if environ.get(name, "").strip():
            return environ[name].strip().upper()
    return ""


def _kind_allowed_by(cap: str) -> Bf16Kind:
    """The best bf16 kind oneDNN may use under ISA cap ``cap`` (oneDNN's names, e.g.
    ``AVX512_CORE_BF16``, ``AVX10_1_512_AMX``, ``ALL``; ``""`` = no cap)."""
    if not cap or cap in ("ALL", "DEFAULT") or "AMX" in cap:
        return "amx"
    # AVX512_CORE_FP16 is AVX10_1_512's older name; both include AVX512-BF16.
    if cap.startswith(("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10")):
        return "avx512_bf16"
    return "emulated"


def bf16_kind(flags: Optional[set[str]] = None, cap: Optional[str] = None) -> Bf16Kind:
    """How bf16 matmuls run on this CPU: ``"amx"`` (AMX tiles, the fastest),
    ``"avx512_bf16"`` (native bf16 dot products, no AMX, e.g. AMD Zen 4/5) or
    ``"emulated"`` (AVX2/AVX-512F only: bf16 is converted to fp32 and back,
    usually slower than plain fp32).

    ``flags``: as :func:`cpu_flags` returns them (default this machine's).
    ``cap``: oneDNN's ISA cap as :func:`isa_cap` returns it (default the
    environment's); a cap below what the flags allow lowers the kind.
    """
    flags = cpu_flags() if flags is None else flags
    cap = isa_cap() if cap is None else cap
    if "amx_bf16" in flags:
        kind: Bf16Kind = "amx"
    elif "avx512_bf16" in flags:
        kind = "avx512_bf16"
    else:
        kind = "emulated"
    allowed = _kind_allowed_by(cap)
    return kind if _KIND_RANK[kind] <= _KIND_RANK[allowed] else allowed


def load_average() -> float:
    """The 1-minute load average (runnable processes), ``nan`` where the OS has none (Windows).

    Benchmarks print it beside their timings: a busy machine slows some
    configurations far more than others, so their ratios are only comparable quiet.
    """
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


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
    cap = isa_cap()
    kind = bf16_kind(flags, cap)
    note = " (bf16 timings say nothing about native bf16)" if kind == "emulated" else ""
    if cap:
        note += f" (oneDNN capped at {cap})"
    return (f"{_model_name(text)}; torch {torch.backends.cpu.get_cpu_capability()}; "
            f"flags {shown}; bf16 {kind}{note}")
