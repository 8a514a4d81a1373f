"""videoapp.hardware: CPU flags from fake /proc/cpuinfo files, one per bf16 kind."""
from __future__ import annotations

from pathlib import Path

import pytest

from videoapp.hardware import bf16_kind, cpu_flags, describe_cpu, parse_cpu_flags

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
