"""Process-wide settings that make batch-1 3D convolutions on a CPU fast and steady.

Why: a 3D U-Net step (training or a sliding-window batch) frees and re-allocates the same large activation
buffers over and over. With glibc's defaults, blocks above the mmap threshold come from ``mmap`` and go back to
the kernel on ``free``, so every step faults the same memory in again, page by page, and the heap top is trimmed
and regrown. Turning mmap off for large blocks and raising the trim threshold keeps freed memory in the process for
reuse; the price is that resident memory stays at its peak. ``benchmarks/allocator.py`` measures the effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True if it took effect, False where there is no glibc (a no-op).

    Call it first thing in the process, before the large allocations it is meant for.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
