"""Peak resident memory of one call, from ``/proc/self/status`` (Linux; no psutil needed).

Shared by the benchmarks. The peak (``VmHWM``) is reset through
``/proc/self/clear_refs`` (Linux >= 4.0) after handing freed heap back to the OS
(``malloc_trim``), so memory freed by an earlier method does not hide the next
method's growth.
"""
from __future__ import annotations

import ctypes
import gc
from typing import Callable, Optional


def proc_status_kib(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``); ``None`` if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Collect garbage, trim the heap, and restart ``VmHWM`` from the current RSS; ``False`` if not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], object]) -> Optional[float]:
    """Extra resident memory at the peak of one ``fn()`` call, in MiB (``None`` where it cannot be measured)."""
    if not reset_peak_rss():
        return None
    before = proc_status_kib("VmRSS")
    out = fn()
    peak = proc_status_kib("VmHWM")
    del out
    if before is None or peak is None:
        return None
    return (peak - before) / 1024
