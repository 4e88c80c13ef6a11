"""The surprise guard's window sums and z-scores as compiled loops on a CPU (Numba).

In PyTorch the guard is ~100 elementwise passes over each band of a chunk: for each of its six
evidence windows a running sum along time, frame by frame from Python, shifted sums in space,
and for each of the eleven frame offsets of the local window a subtraction, a square, a
division and a maximum. On a CPU these passes are bound by memory traffic and Python overhead,
not arithmetic: at 512 x 512 they took a third of the inference time. Here each is one
compiled loop that keeps a frame's values in cache.

The calibration's bins, its temporal-change feature and its stages (all of them in one pass,
:func:`stages`) are compiled the same way. Every function returns what the PyTorch code in
:mod:`calmdown.posterior` and :mod:`calmdown.calibration` returns, to the bit: the same float32
operations in the same order (float64 where that code accumulates in float64), so a movie
denoised with and without Numba, or in chunks and bands, gives the same values. Work is split
between PyTorch's number of threads (``torch.get_num_threads()``); each thread writes its own
part of the output, so the values do not depend on the number of threads either.
Numba comes with ``pip install calmdown[fast]``; without it (or on a GPU) the PyTorch code runs.
Kernels are compiled on first use and cached on disk (``NUMBA_CACHE_DIR`` to move the cache).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

__all__ = [
    "bin_index",
    "enabled",
    "line_sum",
    "max_z2_log_odds",
    "running_sum",
    "stages",
    "temporal_change",
]

logger = logging.getLogger(__name__)

_DISABLE_ENV = "CALMDOWN_NO_NUMBA"
"""Environment variable that, set to 1, keeps the PyTorch code on a CPU too."""

_kernels: dict[str, Any] | None = None
_failed = False


def _compile() -> dict[str, Any] | None:
    """Define the kernels (compiled lazily by Numba on first call); None without Numba."""
    global _kernels, _failed
    if _kernels is not None or _failed:
        return _kernels
    if importlib.util.find_spec("numba") is None:
        logger.info("Numba is not installed: the guard runs in PyTorch (calmdown[fast] has it)")
        _failed = True
        return None
    try:
        import numba
    except Exception as err:  # noqa: BLE001 - a broken Numba install must not stop denoising
        logger.warning("Numba could not be imported (%s); the guard runs in PyTorch", err)
        _failed = True
        return None
    # error_model="numpy": a float division by zero gives inf, not an exception; without it
    # the check in every division stops the loops from being vectorised (3.3x slower).
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @jit
    def running_sum(
        x: np.ndarray, half: int, out: np.ndarray, lo: int, hi: int
    ) -> None:  # pragma: no cover
        # (A, N, B) float32, columns lo..hi of B; window sums along N accumulated in float64,
        # as posterior._running_sum (exact for float32 values: equal to its cumulative sums).
        m, n, _ = x.shape
        p = hi - lo
        acc = np.zeros(p, np.float64)
        for c in range(m):
            xc, oc = x[c, :, lo:hi], out[c, :, lo:hi]
            acc[:] = 0.0
            for t in range(min(half, n)):
                for i in range(p):
                    acc[i] += xc[t, i]
            for t in range(n):
                add, sub = t + half < n, t - half - 1 >= 0
                if add and sub:  # one pass: (acc + new) - old, the order of the PyTorch loop
                    new, old, o = xc[t + half], xc[t - half - 1], oc[t]
                    for i in range(p):
                        a = acc[i] + new[i]
                        a -= old[i]
                        acc[i] = a
                        o[i] = np.float32(a)
                    continue
                if add:
                    new = xc[t + half]
                    for i in range(p):
                        acc[i] += new[i]
                if sub:
                    old = xc[t - half - 1]
                    for i in range(p):
                        acc[i] -= old[i]
                o = oc[t]
                for i in range(p):
                    o[i] = np.float32(acc[i])

    @jit
    def running_sum_rows(
        x: np.ndarray, half: int, out: np.ndarray, lo: int, hi: int
    ) -> None:  # pragma: no cover
        # (A, N) float32, rows lo..hi: the same along the last, contiguous axis, a scalar sum.
        n = x.shape[1]
        for c in range(lo, hi):
            xc, oc = x[c], out[c]
            acc = 0.0
            for t in range(min(half, n)):
                acc += xc[t]
            for t in range(n):
                if t + half < n:
                    acc += xc[t + half]
                if t - half - 1 >= 0:
                    acc -= xc[t - half - 1]
                oc[t] = np.float32(acc)

    @jit
    def offsets_sum(
        x: np.ndarray, dys: np.ndarray, dxs: np.ndarray, out: np.ndarray, lo: int, hi: int
    ) -> None:  # pragma: no cover
        # (T, Y, X), frames lo..hi: zero plus x at each offset inside the frame, in the
        # offsets' order. Each output row is summed in a buffer in cache, then written once.
        _, h, w = x.shape
        buf = np.zeros(w, np.float32)
        for t in range(lo, hi):
            for i in range(h):
                buf[:] = 0.0
                for k in range(dys.shape[0]):
                    dy, dx = dys[k], dxs[k]
                    if i + dy < 0 or i + dy >= h:
                        continue
                    j0, j1 = max(0, -dx), min(w, w - dx)
                    dst, src = buf[j0:j1], x[t, i + dy, j0 + dx : j1 + dx]
                    for j in range(j1 - j0):
                        dst[j] += src[j]
                out[t, i] = buf

    @jit
    def max_z2(
        r_win: np.ndarray,
        v_win: np.ndarray,
        r_own: np.ndarray,
        v_own: np.ndarray,
        frames: int,
        ht: int,
        hp: int,
        holds: np.ndarray,
        own_weights: np.ndarray,
        one_pixel: bool,
        first: int,
        f0: int,
        f1: int,
        base: np.float32,
        coef: np.float32,
        log_odds: np.ndarray,
        lo: int,
        hi: int,
    ) -> None:  # pragma: no cover
        # As posterior.surprise_guard's loop over the local window's offsets for one window,
        # output frames f0 + lo .. f0 + hi (log_odds holds frames f0..f1). r_own, v_own are
        # the pixel's own values (every frame), r_win and v_win the window sums of frames
        # first.. ; holds[dy + hp, dx + hp] whether the window centred (dy, dx) away holds the
        # pixel, own_weights[...] how much of its residual to take out.
        n, h, w = r_own.shape
        tiny = np.float32(1e-12)
        zero_own = one_pixel and (n < 2 or frames < 3)
        z2 = np.zeros((h, w), np.float32)
        for t in range(f0 + lo, f0 + hi):
            z2[:, :] = 0.0
            for dy in range(-hp, hp + 1):
                for dx in range(-hp, hp + 1):
                    j0, j1 = max(0, -dx), min(w, w - dx)
                    for dt in range(-ht, ht + 1):
                        s = t + dt
                        if s < 0 or s >= n:
                            continue
                        in_t = abs(dt) <= frames // 2
                        holds_t = in_t and holds[dy + hp, dx + hp]
                        if holds_t and zero_own:
                            continue  # only the pixel's own value was in the window: z2 = 0
                        weight = own_weights[dy + hp, dx + hp]
                        drop = np.float32(1.0 if holds_t else 0.0)
                        a, b = j0 + dx, j1 + dx
                        for i in range(max(0, -dy), min(h, h - dy)):
                            rw = r_win[s - first, i + dy, a:b]
                            vw = v_win[s - first, i + dy, a:b]
                            ro, vo = r_own[t, i, j0:j1], v_own[t, i, j0:j1]
                            zr = z2[i, j0:j1]
                            if in_t and (holds_t or weight != 0):
                                for j in range(j1 - j0):
                                    r = rw[j] - weight * ro[j]
                                    v = vw[j] - drop * vo[j]
                                    v = v if v > tiny else tiny
                                    z = r * r / v
                                    zr[j] = z if z > zr[j] else zr[j]
                            else:
                                for j in range(j1 - j0):
                                    r = rw[j]
                                    v = vw[j]
                                    v = v if v > tiny else tiny
                                    z = r * r / v
                                    zr[j] = z if z > zr[j] else zr[j]
                    # Outside the frame the moved sums are zero: z2 = 0, the initial value.
            for i in range(h):
                odds = log_odds[t - f0, i]
                zr = z2[i]
                for j in range(w):
                    val = base + coef * zr[j]
                    odds[j] = val if val > odds[j] else odds[j]

    @jit
    def bins(
        x: np.ndarray, edges: np.ndarray, out: np.ndarray, lo: int, hi: int
    ) -> None:  # pragma: no cover
        # Count of edges below each value lo..hi: calibration.bin_index (float32 comparisons).
        for a in range(lo, hi, 2048):  # a block of the output stays in cache over the edges
            b = min(hi, a + 2048)
            xs, o = x[a:b], out[a:b]
            o[:] = 0
            for k in range(edges.shape[0]):
                e = edges[k]
                for i in range(b - a):
                    o[i] += xs[i] > e

    @jit
    def box_mean(
        x: np.ndarray, pixels: int, box: np.ndarray, lo: int, hi: int
    ) -> None:  # pragma: no cover
        # calibration.temporal_change's first step, frames lo..hi: a pixels x pixels mean
        # clipped at the frame's edges (torch's avg_pool2d without padding in the count: rows
        # then columns in order, float32, divided by the count).
        _, h, w = x.shape
        r = pixels // 2
        buf = np.zeros(w, np.float32)
        for t in range(lo, hi):
            for i in range(h):
                i0, i1 = max(0, i - r), min(h, i + r + 1)
                buf[:] = 0.0
                for ii in range(i0, i1):
                    row = x[t, ii]
                    for d in range(-r, r + 1):
                        j0, j1 = max(0, -d), min(w, w - d)
                        dst, src = buf[j0:j1], row[j0 + d : j1 + d]
                        for j in range(j1 - j0):
                            dst[j] += src[j]
                o = box[t, i]
                for j in range(w):
                    cols = min(w, j + r + 1) - max(0, j - r)
                    o[j] = buf[j] / np.float32((i1 - i0) * cols)

    @jit
    def change(
        box: np.ndarray, frames: int, out: np.ndarray, lo: int, hi: int
    ) -> None:  # pragma: no cover
        # Its second, frames lo..hi: the means of up to `frames` frames of the box means
        # before and after, each summed nearest first, and their absolute difference.
        n, h, w = box.shape
        before = np.zeros(w, np.float32)
        after = np.zeros(w, np.float32)
        for t in range(lo, hi):
            nb, na = min(frames, t), min(frames, n - 1 - t)
            for i in range(h):
                o = out[t, i]
                if nb == 0 or na == 0:
                    o[:] = 0.0
                    continue
                before[:] = 0.0
                after[:] = 0.0
                for k in range(1, nb + 1):
                    src = box[t - k, i]
                    for j in range(w):
                        before[j] += src[j]
                for k in range(1, na + 1):
                    src = box[t + k, i]
                    for j in range(w):
                        after[j] += src[j]
                fb, fa = np.float32(nb), np.float32(na)
                for j in range(w):
                    o[j] = abs(after[j] / fa - before[j] / fb)

    @jit
    def stages(
        var: np.ndarray,
        loc: np.ndarray,
        level: np.ndarray,
        change: np.ndarray,
        kinds: np.ndarray,
        level_edges: np.ndarray,
        level_starts: np.ndarray,
        feature_edges: np.ndarray,
        feature_starts: np.ndarray,
        tables: np.ndarray,
        table_starts: np.ndarray,
        out: np.ndarray,
        lo: int,
        hi: int,
    ) -> None:  # pragma: no cover
        # calibration.CalibrationStages.apply (and ScaleCalibration.apply) on values lo..hi:
        # each stage in turn multiplies the variance by its table's factor at (bin of the
        # level, bin of its feature), the feature computed on the variance so far. Stage k's
        # edges are level_edges[level_starts[k]:level_starts[k + 1]] (likewise the feature's),
        # its table (levels x features, row-major) starts at table_starts[k]. Kinds: 0 change,
        # 1 activity, 2 deviation (calibration.deviation), 3 the variance itself (no level).
        tiny, floor = np.float32(1e-12), np.float32(1e-3)
        size = 2048  # a block of values stays in cache through the stages
        feat = np.empty(size, np.float32)
        bi = np.empty(size, np.int64)
        bj = np.empty(size, np.int64)
        for a in range(lo, hi, size):
            b = min(hi, a + size)
            m = b - a
            v = out[a:b]
            v[:] = var[a:b]
            lv, lc, ch = level[a:b], loc[a:b], change[a:b]
            for k in range(kinds.shape[0]):
                kind = kinds[k]
                bi[:m] = 0
                if kind != 3:
                    for e in range(level_starts[k], level_starts[k + 1]):
                        edge = level_edges[e]
                        for i in range(m):
                            bi[i] += lv[i] > edge
                bj[:m] = 0
                if feature_starts[k + 1] > feature_starts[k]:
                    if kind == 0:
                        for i in range(m):
                            feat[i] = ch[i] / np.sqrt(v[i] if v[i] > tiny else tiny)
                    elif kind == 1:
                        for i in range(m):
                            feat[i] = abs(lc[i] - lv[i]) / np.sqrt(v[i] if v[i] > tiny else tiny)
                    elif kind == 2:
                        for i in range(m):
                            x = lv[i] if lv[i] > floor else floor
                            feat[i] = abs(lc[i] - lv[i]) / np.sqrt(x)
                    else:
                        feat[:m] = v
                    for e in range(feature_starts[k], feature_starts[k + 1]):
                        edge = feature_edges[e]
                        for i in range(m):
                            bj[i] += feat[i] > edge
                n_cols = feature_starts[k + 1] - feature_starts[k] + 1
                t0 = table_starts[k]
                for i in range(m):
                    v[i] = v[i] * tables[t0 + bi[i] * n_cols + bj[i]]

    _kernels = {
        "stages": stages,
        "box_mean": box_mean,
        "change": change,
        "bins": bins,
        "running_sum_rows": running_sum_rows,
        "running_sum": running_sum,
        "offsets_sum": offsets_sum,
        "max_z2": max_z2,
    }
    return _kernels


def enabled(x: torch.Tensor) -> bool:
    """Whether the compiled loops serve ``x``: a float32 CPU tensor, with Numba importable."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        return False
    if os.environ.get(_DISABLE_ENV, "") == "1":
        return False
    return _compile() is not None


def _array(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().numpy())


_MIN_SPLIT = 1 << 16
"""Fewest elements per thread worth a thread of its own."""

_pool: tuple[ThreadPoolExecutor, int, int] | None = None  # pool, its threads, its process id
_pool_lock = threading.Lock()


def _split_run(kernel: Any, n: int, elements: int, *args: Any) -> None:
    """Run ``kernel(*args, lo, hi)`` over ``0..n`` in parts on PyTorch's number of threads.

    The kernels release the GIL and each part writes its own slice of the output, so the
    parts run at once and the values do not depend on how the range is split.
    """
    global _pool
    parts = max(1, min(torch.get_num_threads(), n, elements // _MIN_SPLIT))
    if parts == 1:
        kernel(*args, 0, n)
        return
    with _pool_lock:
        # Grown on demand; a forked child process has none of its parent's threads.
        if _pool is None or _pool[1] < parts or _pool[2] != os.getpid():
            pool = ThreadPoolExecutor(parts, thread_name_prefix="calmdown-fused")
            _pool = (pool, parts, os.getpid())
        pool = _pool[0]
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    futures = [
        pool.submit(kernel, *args, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)
    ]
    for future in futures:
        future.result()


def running_sum(x: torch.Tensor, half: int, dim: int = 0) -> torch.Tensor:
    """Window sums ``[i - half, i + half]`` along ``dim``, clipped at the ends, in float64.

    Equal to the PyTorch code's float64 running sum along time and cumulative sums in space:
    both are exact for float32 values (see :func:`calmdown.posterior._window_sum_1d`).
    """
    kernels = _compile()
    assert kernels is not None
    a = _array(x)
    out = np.empty_like(a)
    if dim == a.ndim - 1:
        n = a.shape[-1]
        rows = a.size // max(n, 1)
        _split_run(
            kernels["running_sum_rows"], rows, a.size, a.reshape(rows, n), int(half),
            out.reshape(rows, n),
        )  # fmt: skip
    else:
        shape = (int(np.prod(a.shape[:dim])), a.shape[dim], int(np.prod(a.shape[dim + 1 :])))
        _split_run(
            kernels["running_sum"], shape[2], a.size, a.reshape(shape), int(half),
            out.reshape(shape),
        )  # fmt: skip
    return torch.from_numpy(out)


def bin_index(x: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Index of the bin of each value between sorted interior ``edges`` (int64).

    Compared in float32, as PyTorch compares a float32 tensor with a Python float.
    """
    kernels = _compile()
    assert kernels is not None
    a = _array(x)
    out = np.empty(a.shape, np.int64)
    _split_run(
        kernels["bins"], a.size, a.size, a.reshape(-1), np.asarray(edges, np.float32),
        out.reshape(-1),
    )  # fmt: skip
    return torch.from_numpy(out)


def temporal_change(x: torch.Tensor, pixels: int, frames: int) -> torch.Tensor:
    """:func:`calmdown.calibration.temporal_change` of a (T, Y, X) float32 CPU tensor."""
    kernels = _compile()
    assert kernels is not None
    a = _array(x)
    box = np.empty_like(a)
    out = np.empty_like(a)
    _split_run(kernels["box_mean"], a.shape[0], a.size, a, int(pixels), box)
    _split_run(kernels["change"], a.shape[0], a.size, box, int(frames), out)
    return torch.from_numpy(out)


def line_sum(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Sum of (T, Y, X) ``x`` at ``(dy, dx)`` offsets of each pixel (zero outside the frame)."""
    kernels = _compile()
    assert kernels is not None
    a = _array(x)
    dys = np.array([o[0] for o in offsets], np.int64)
    dxs = np.array([o[1] for o in offsets], np.int64)
    out = np.empty_like(a)
    _split_run(kernels["offsets_sum"], a.shape[0], a.size, a, dys, dxs, out)
    return torch.from_numpy(out)


def max_z2_log_odds(
    sums: tuple[torch.Tensor, ...],
    frames: int,
    local: tuple[int, int],
    out_frames: tuple[int, int],
    base: float,
    coef: float,
    log_odds: torch.Tensor,
    *,
    holds: np.ndarray,
    own_weights: np.ndarray,
    one_pixel: bool,
    first: int = 0,
) -> None:
    """Raise ``log_odds`` to ``base + coef * z2`` of one window where that is larger, in place.

    ``z2`` is the largest squared z-score of the window centred within ``local`` = (frames,
    pixels) of each output pixel, the pixel's own value in the output frame left out where
    the window holds it (:func:`calmdown.posterior._shifted_z2`): ``holds[dy + h, dx + h]``
    for the window centred ``(dy, dx)`` away, ``h = local[1] // 2``, and ``own_weights``
    there the weight of the pixel's own residual taken out of that window's sum in frame
    ``t``; ``one_pixel``: the window's footprint is its centre alone. ``log_odds`` is a
    contiguous float32 CPU tensor of the frames ``out_frames`` = (f0, f1). The window sums
    (the first two of ``sums``) hold the frames from ``first`` on, the pixel's own values
    every frame.
    """
    kernels = _compile()
    assert kernels is not None
    arrays = [_array(s) for s in sums]
    lo = log_odds.numpy()
    if not lo.flags.c_contiguous:
        raise ValueError("log_odds must be contiguous")
    f0, f1 = out_frames
    _split_run(
        kernels["max_z2"],
        f1 - f0,
        lo.size * (2 * (local[0] // 2) + 1),
        *arrays,
        int(frames),
        int(local[0]) // 2,
        int(local[1]) // 2,
        np.ascontiguousarray(holds, dtype=np.bool_),
        np.ascontiguousarray(own_weights, dtype=np.float32),
        bool(one_pixel),
        int(first),
        int(f0),
        int(f1),
        np.float32(base),
        np.float32(coef),
        lo,
    )


STAGE_KINDS = {"change": 0, "activity": 1, "deviation": 2, "variance": 3}
"""Features of :func:`stages`: the calibration stages' and the variance's own."""


def stages(
    var: torch.Tensor,
    steps: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[Sequence[float]]]],
    loc: torch.Tensor | None = None,
    level: torch.Tensor | None = None,
    change: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply variance factors by bins of (level, feature), one step after another, in one pass.

    Each step is ``(feature, level_edges, feature_edges, factors)`` with ``feature`` a key of
    :data:`STAGE_KINDS`: what :class:`calmdown.calibration.StratifiedCalibration` (and, with
    ``"variance"`` and no level edges, :class:`~calmdown.calibration.ScaleCalibration`) apply,
    to the bit. ``level`` is broadcast to ``var``'s shape; ``loc`` and ``change`` are needed
    by the steps whose feature reads them.
    """
    kernels = _compile()
    assert kernels is not None
    a = _array(var)
    shape = a.shape

    def values(t: torch.Tensor | None) -> np.ndarray:
        if t is None:
            return np.zeros(1, np.float32)
        return _array(torch.broadcast_to(t, var.shape)).reshape(-1)

    def flat(parts: list[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        starts = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        body = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        return (body if body.size else np.zeros(1, dtype)), starts

    kinds = np.array([STAGE_KINDS[f] for f, *_ in steps], np.int64)
    # The kernel reads these where a step needs them (placeholders stand in for the others).
    if (level is None or loc is None) and (kinds != STAGE_KINDS["variance"]).any():
        raise ValueError("these steps need the prior's location and the level")
    if change is None and (kinds == STAGE_KINDS["change"]).any():
        raise ValueError("a step by the temporal change needs the change")
    level_edges, level_starts = flat([np.asarray(s[1], np.float32) for s in steps], np.float32)
    feature_edges, feature_starts = flat([np.asarray(s[2], np.float32) for s in steps], np.float32)
    tables, table_starts = flat(
        [np.asarray(s[3], np.float32).reshape(-1) for s in steps], np.float32
    )
    out = np.empty_like(a)
    _split_run(
        kernels["stages"], a.size, a.size, a.reshape(-1), values(loc), values(level),
        values(change), kinds, level_edges, level_starts, feature_edges, feature_starts,
        tables, table_starts, out.reshape(-1),
    )  # fmt: skip
    return torch.from_numpy(out.reshape(shape))
