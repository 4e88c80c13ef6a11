import subprocess
import sys

import pytest
import torch

from calmdown import allocator


def test_large_arrays_nests_and_gives_the_same_results():
    x = torch.arange(3_000_000, dtype=torch.float32).reshape(300, 100, 100)
    expected = (x * 2).sum(dim=0)
    with allocator.large_arrays():
        with allocator.large_arrays():
            inner = (x * 2).sum(dim=0)
            assert allocator._depth == 2
        after_inner = (x * 2).sum(dim=0)
        assert allocator._depth == 1
    allocator.release_freed_memory()
    assert allocator._depth == 0
    assert torch.equal(inner, expected) and torch.equal(after_inner, expected)


def test_settings_come_back_when_a_run_fails():
    try:
        with allocator.large_arrays():
            raise RuntimeError("a failing run")
    except RuntimeError:
        pass
    assert allocator._depth == 0


_COUNT_ARENAS = """
import ctypes, os, sys, tempfile, threading
import numpy as np
from calmdown import allocator
if sys.argv[1] == "limit":
    allocator.limit_arenas()
barrier = threading.Barrier(8)
held = []
def work():
    held.append(np.ones(1 << 18))  # each thread's first large block, held until all have one
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "info.xml")
    f = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(f))
    libc.fclose(ctypes.c_void_p(f))
    print(open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc only")
def test_limit_arenas_keeps_reader_threads_from_making_heaps_of_their_own():
    def arenas(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _COUNT_ARENAS, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout.strip())

    assert arenas("limit") <= 2
    assert arenas("default") > 2  # what the limit changes: a heap per thread
