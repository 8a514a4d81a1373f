"""videoapp.hardware: CPU flags from fake /proc/cpuinfo files, one per bf16 kind."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from videoapp.hardware import (
    ISA_CAP_VARIABLES, bf16_kind, cpu_flags, describe_cpu, isa_cap, load_average, parse_cpu_flags,
)

# Trimmed from real /proc/cpuinfo files: two logical CPUs each, as the kernel writes them.
_TEMPLATE = """processor\t: {i}
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: {flags}
bugs\t\t: spectre_v1 spectre_v2

"""
SAPPHIRE_RAPIDS = ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+",
                   "fpu sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8")
ZEN5 = ("AuthenticAMD", "AMD EPYC 9R45", "fpu sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16")
HASWELL = ("GenuineIntel", "Intel(R) Xeon(R) CPU E5-2690 v3", "fpu sse2 avx fma avx2")


@pytest.fixture(autouse=True)
def _no_isa_cap(monkeypatch):
    # A developer timing the AVX512-BF16 path with ONEDNN_MAX_CPU_ISA set must not change these tests.
    for name in ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _cpuinfo(tmp_path: Path, vendor: str, model: str, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(_TEMPLATE.format(i=i, vendor=vendor, model=model, flags=flags) for i in range(2)))
    return path


@pytest.mark.parametrize("cpu, kind, shown", [
    (SAPPHIRE_RAPIDS, "amx", "avx2 avx512f avx512_bf16 amx_bf16"),
    (ZEN5, "avx512_bf16", "avx2 avx512f avx512_bf16"),
    (HASWELL, "emulated", "avx2"),
])
def test_kinds_from_fake_cpuinfo(tmp_path, cpu, kind, shown):
    path = _cpuinfo(tmp_path, *cpu)
    flags = cpu_flags(path)
    assert flags == set(cpu[2].split())
    assert parse_cpu_flags(path.read_text()) == flags
    assert bf16_kind(flags) == kind
    line = describe_cpu(path)
    assert line.startswith(f"{cpu[1]}; torch ")
    assert f"; flags {shown}; bf16 {kind}" in line
    assert ("say nothing about native bf16" in line) == (kind == "emulated")


def test_flags_substring_is_not_a_flag(tmp_path):
    # "amx_bf16" as part of another word must not count (the old substring test would have said native).
    path = _cpuinfo(tmp_path, "GenuineIntel", "x", "avx2 no_amx_bf16x avx512_bf16_off")
    assert bf16_kind(cpu_flags(path)) == "emulated"


def test_missing_or_flagless_cpuinfo(tmp_path):
    assert cpu_flags(tmp_path / "absent") == set()
    assert bf16_kind(set()) == "emulated"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n")
    assert cpu_flags(arm) == set()
    assert "; flags ?; bf16 emulated" in describe_cpu(arm)


@pytest.mark.parametrize("cap, on_amx, on_zen5", [
    ("", "amx", "avx512_bf16"),
    ("ALL", "amx", "avx512_bf16"),
    ("AVX512_CORE_AMX", "amx", "avx512_bf16"),
    ("avx10_1_512_amx_fp16", "amx", "avx512_bf16"),  # oneDNN accepts any case
    ("AVX10_1_512", "avx512_bf16", "avx512_bf16"),
    ("AVX512_CORE_FP16", "avx512_bf16", "avx512_bf16"),
    ("AVX512_CORE_BF16", "avx512_bf16", "avx512_bf16"),
    ("AVX512_CORE_VNNI", "emulated", "emulated"),
    ("AVX2", "emulated", "emulated"),
])
def test_onednn_isa_cap_lowers_the_kind(cap, on_amx, on_zen5):
    # The cap as read from the environment; it never raises a kind above what the CPU has
    # (Haswell stays emulated under any cap).
    read = isa_cap({"ONEDNN_MAX_CPU_ISA": cap})
    assert read == cap.upper()
    assert bf16_kind(set(SAPPHIRE_RAPIDS[2].split()), read) == on_amx
    assert bf16_kind(set(ZEN5[2].split()), read) == on_zen5
    assert bf16_kind(set(HASWELL[2].split()), read) == "emulated"


def test_isa_cap_read_from_the_environment(tmp_path, monkeypatch):
    assert isa_cap({}) == ""
    assert isa_cap({"DNNL_MAX_CPU_ISA": " avx512_core_bf16 "}) == "AVX512_CORE_BF16"
    # The current name wins over the old one, as in oneDNN.
    assert isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "ALL"}) == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    path = _cpuinfo(tmp_path, *SAPPHIRE_RAPIDS)
    assert bf16_kind(cpu_flags(path)) == "avx512_bf16"
    assert describe_cpu(path).endswith("; bf16 avx512_bf16 (oneDNN capped at AVX512_CORE_BF16)")


def test_load_average_is_the_one_minute_figure():
    load = load_average()
    if hasattr(os, "getloadavg"):
        assert load >= 0 and abs(load - os.getloadavg()[0]) < 5  # the machine may change between the two reads
    else:
        assert math.isnan(load)
