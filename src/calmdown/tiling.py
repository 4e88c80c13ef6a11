"""Spatial tiles with blended overlaps, and time chunks with a halo.

Inference never holds more than one chunk of frames: each chunk is read with a halo of frames on
both sides (the network's context and the guard's window), processed, and only its interior is
kept, so the result does not depend on the chunk size. Frames larger than a tile are cut into
overlapping tiles whose predictions are blended with linear ramps, so there are no seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["TimeChunk", "predict_tiled", "tile_starts", "time_chunks"]


@dataclass(frozen=True)
class TimeChunk:
    """One chunk of frames: ``out`` is what it produces, ``read`` what it needs."""

    out_start: int
    out_stop: int
    read_start: int
    read_stop: int


def time_chunks(
    n_frames: int, chunk: int, halo: int, frames: tuple[int, int] | None = None
) -> list[TimeChunk]:
    """Cut ``n_frames`` into chunks of ``chunk`` output frames, each read with ``halo`` more.

    ``frames=(start, stop)`` covers only those output frames (halos still reach outside).

    Examples
    --------
    >>> [(c.out_start, c.out_stop, c.read_start, c.read_stop) for c in time_chunks(10, 4, 2)]
    [(0, 4, 0, 6), (4, 8, 2, 10), (8, 10, 6, 10)]
    >>> [(c.out_start, c.out_stop) for c in time_chunks(10, 4, 2, frames=(3, 6))]
    [(3, 6)]
    """
    first, last = frames if frames is not None else (0, n_frames)
    out = []
    for start in range(first, last, chunk):
        stop = min(start + chunk, last)
        out.append(TimeChunk(start, stop, max(0, start - halo), min(n_frames, stop + halo)))
    return out


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of ``tile`` pixels covering ``size`` with at least ``overlap``.

    Examples
    --------
    >>> tile_starts(100, 64, 16)
    [0, 36]
    """
    if size <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = -(-(size - tile) // step) + 1
    starts = [round(i * (size - tile) / (n - 1)) for i in range(n)]
    return sorted(set(starts))


def _ramp(length: int, lo_overlap: int, hi_overlap: int) -> torch.Tensor:
    """Blending weights along one axis: linear ramps over the overlaps, 1 inside."""
    w = torch.ones(length)
    if lo_overlap > 0:
        w[:lo_overlap] = torch.linspace(0, 1, lo_overlap + 2)[1:-1]
    if hi_overlap > 0:
        w[length - hi_overlap :] = torch.linspace(1, 0, hi_overlap + 2)[1:-1]
    return w


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def predict_tiled(
    fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    mean: torch.Tensor,
    frames: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    multiple: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a fully convolutional ``fn(mean, frames) -> (loc, scale)`` over blended tiles.

    Parameters
    ----------
    fn : callable
        The network.
    mean : Tensor
        (B, 1, H, W).
    frames : Tensor
        (B, C, H, W).
    tile, overlap : int
        Tile side and minimum overlap in pixels.
    multiple : int
        Tiles are padded (by reflection) to a multiple of this.

    Returns
    -------
    loc, scale : Tensor
        (B, 1, H, W) each.
    """
    b, _, h, w = frames.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    if len(ys) == 1 and len(xs) == 1:
        m, _, _ = _pad_to_multiple(mean, multiple)
        f, _, _ = _pad_to_multiple(frames, multiple)
        loc, scale = fn(m, f)
        return loc[..., :h, :w], scale[..., :h, :w]
    th, tw = min(tile, h), min(tile, w)
    acc_loc = torch.zeros((b, 1, h, w), device=frames.device)
    acc_scale = torch.zeros_like(acc_loc)
    acc_w = torch.zeros((1, 1, h, w), device=frames.device)
    for iy, y0 in enumerate(ys):
        lo_y = ys[iy - 1] + th - y0 if iy > 0 else 0
        hi_y = y0 + th - ys[iy + 1] if iy + 1 < len(ys) else 0
        wy = _ramp(th, max(lo_y, 0), max(hi_y, 0))
        for ix, x0 in enumerate(xs):
            lo_x = xs[ix - 1] + tw - x0 if ix > 0 else 0
            hi_x = x0 + tw - xs[ix + 1] if ix + 1 < len(xs) else 0
            wx = _ramp(tw, max(lo_x, 0), max(hi_x, 0))
            weight = (wy[:, None] * wx[None, :]).to(frames.device)
            sl = (..., slice(y0, y0 + th), slice(x0, x0 + tw))
            m, _, _ = _pad_to_multiple(mean[sl], multiple)
            f, _, _ = _pad_to_multiple(frames[sl], multiple)
            loc, scale = fn(m, f)
            acc_loc[sl] += loc[..., :th, :tw] * weight
            acc_scale[sl] += scale[..., :th, :tw] * weight
            acc_w[sl] += weight
    return acc_loc / acc_w, acc_scale / acc_w
