"""How the C allocator hands memory to the large arrays of a run (glibc only; else nothing).

Inference and calibration make thousands of temporaries of 4-100 MB each. glibc serves
blocks above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns them on
``free``: every such temporary then costs a page fault per 4 kB page when first written.
At 512 x 512 that was a quarter of the run's time (19.9 s of system time in 79 s on one
core). :func:`large_arrays` serves them from the heap instead, which keeps freed blocks for
the next temporary, and :func:`release_freed_memory` hands the free part of the heap back
to the system between chunks, so that peak memory stays that of the live arrays.
:func:`limit_arenas` keeps the threads that read and decompress a movie (Zarr's, tifffile's)
from keeping heaps of their own.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["large_arrays", "limit_arenas", "release_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_ARENAS = 2
"""Most malloc arenas (glibc's default: 8 per core). Each thread that decompresses chunks of
a Zarr movie otherwise gets an arena of its own, whose freed blocks stay resident: reading
a 512 x 512 x 10000 Zarr movie through kept 150 MB more resident, preparing it 90 MB, and
inference peaked 200 MB higher (1714 against 1509 MB, one thread)."""
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_KEEP_FREE = 1 << 28
"""Free memory at the top of the heap kept for reuse (until :func:`release_freed_memory`):
enough for the temporaries of one step at 512 x 512 (keeping 1 GB was no faster and held
up to 0.6 GB more at the peak)."""


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc has both; musl has neither)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
_lock = threading.Lock()
_depth = 0


@contextmanager
def large_arrays() -> Iterator[None]:
    """Serve large blocks from the heap (not one ``mmap`` each) while inside.

    Nested and concurrent uses share one setting; the process's settings come back (glibc's
    defaults) when the last one leaves. Where the C library is not glibc, nothing changes.
    """
    global _depth
    with _lock:
        if _depth == 0 and _LIBC is not None:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _LIBC is not None:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _LIBC.malloc_trim(0)


def limit_arenas() -> None:
    """Limit the process to :data:`_ARENAS` malloc arenas (from now on; not undone).

    Only arenas made later are affected, so call it before threads start reading; the
    command line does so first thing, and :func:`calmdown.prepare` on every run.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, _ARENAS)


def release_freed_memory() -> None:
    """Hand memory freed since the last call back to the system.

    glibc keeps freed blocks in the heap, where holes between live blocks count as resident
    memory; after a chunk of many tens of MB of temporaries that was 0.5-1 GB at 512 x 512.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
