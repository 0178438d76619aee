"""The allocator setting takes effect on glibc Linux and is a harmless no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys


def test_keep_freed_memory_takes_effect_on_glibc_and_the_process_still_allocates() -> None:
    code = (
        "from meddet.runtime import keep_freed_memory\n"
        "import torch\n"
        "ok = keep_freed_memory()\n"
        "x = torch.ones(64, 1024, 1024); del x; y = torch.ones(64, 1024, 1024)\n"  # 256 MiB freed and reused
        "print(ok, float(y.sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == [str(expected), str(float(64 * 1024 * 1024))]
