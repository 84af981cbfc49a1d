"""keep_freed_memory: glibc keeps freed blocks, so touching a re-allocated block costs no page faults."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

import nnjax

# Allocates, touches and frees a 48 MiB block twice with glibc's malloc; prints the page faults of the
# second touch. glibc's default serves such a block with fresh mmap pages each time (one fault per 4 KiB page).
SCRIPT = """
import ctypes, resource, sys
if sys.argv[1] == "keep":  # glibc's default needs no nnjax (nor JAX's import time)
    import nnjax
    assert nnjax.keep_freed_memory() is True
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 48 << 20
for attempt in range(2):
    block = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(block)
print(faults)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_reuses_warm_pages():
    def second_touch_faults(mode):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    pages = (48 << 20) // 4096
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):  # with huge pages everywhere, far fewer faults
        assert second_touch_faults("default") >= pages // 2  # glibc's default: fresh pages again
    assert second_touch_faults("keep") < pages // 100  # the freed block came back warm


def test_keep_freed_memory_checks_its_argument():
    for bad in (0, -1, 2**31, 1.5, True):
        with pytest.raises(ValueError, match=r"keep_freed_memory: argument `limit_bytes` expected an int"):
            nnjax.keep_freed_memory(bad)
