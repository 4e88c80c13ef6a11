"""What the network sees around a frame: neighbouring frames and the time-averaged image.

The mean image is a running mean: the movie is cut into blocks of ``window`` frames, each block
averaged, and the block means are interpolated linearly in time, so slow drift is followed.
Bleaching is followed frame by frame, by the movie's overall brightness (a trend read off the
sums of whole frames), and where a pixel's blocks differ by no more than their noise they are
pulled toward the movie's overall mean, so that a static pixel's mean image averages the whole
movie rather than one block. A frame's own contribution is removed from its mean image
(leave-one-out), so the prediction of frame ``t`` never contains the noise of frame ``t``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter

from calmdown.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["BlockFile", "MeanImage", "compute_mean_image", "context_indices", "min_frames"]


def min_frames(context_frames: int) -> int:
    """Fewest frames a movie needs for ``context_frames`` (K) on each side."""
    return 2 * context_frames + 1


def context_indices(t: np.ndarray | int, context_frames: int, n_frames: int) -> np.ndarray:
    """Return the indices of the 2K context frames of each frame ``t``, never ``t`` itself.

    Offsets run ``-K..-1, 1..K``. Where ``t + k`` falls outside the movie, the frame on the
    other side, ``t - k``, takes its place, so the first and last frames get a full context.

    Parameters
    ----------
    t : int or ndarray of int
        Frame indices.
    context_frames : int
        K.
    n_frames : int
        Frames in the movie; must be at least ``2K + 1``.

    Returns
    -------
    ndarray of int, shape ``(*t.shape, 2K)``

    Examples
    --------
    >>> context_indices(0, 2, 10).tolist()
    [2, 1, 1, 2]
    """
    if n_frames < min_frames(context_frames):
        raise InputError(
            f"the movie has {n_frames} frames but a context of {context_frames} frames on each "
            f"side needs at least {min_frames(context_frames)}; pass a longer movie or a smaller "
            "--context-frames"
        )
    k = np.concatenate([np.arange(-context_frames, 0), np.arange(1, context_frames + 1)])
    t = np.asarray(t)[..., None]
    j = t + k
    outside = (j < 0) | (j >= n_frames)
    return np.where(outside, t - k, j)


IN_FILE_BYTES = 16 << 20
"""Block means larger than this (512 x 512 frames: from 16 blocks, 8000 frames at the default
window) are kept in a temporary file, so that memory stays flat in the movie's length."""


class BlockFile:
    """A float32 ``(n_blocks, Y, X)`` array kept in an unlinked temporary file.

    Blocks are written and read with plain file I/O (no memory map, whose touched pages would
    count as resident), so holding the block means of a movie of any length costs no memory;
    each read costs the blocks it asks for. Indexing reads the range of blocks the first index
    spans, then applies the rest of the index. It pickles as the plain array it holds (a Dask
    worker elsewhere cannot read this machine's file).
    """

    def __init__(self, n_blocks: int, frame_shape: tuple[int, ...]) -> None:
        self.shape = (n_blocks, *frame_shape)
        self.dtype = np.dtype(np.float32)
        self._block_bytes = int(np.prod(frame_shape)) * self.dtype.itemsize
        # Held open for the object's life (closed with it); the system removes the file then.
        self._file = tempfile.TemporaryFile(prefix="calmdown-mean-")  # noqa: SIM115
        self._close = weakref.finalize(self, self._file.close)
        self._file.truncate(n_blocks * self._block_bytes)

    def close(self) -> None:
        """Remove the file now (also done when the object is garbage-collected)."""
        self._close()

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, block: int, image: np.ndarray) -> None:
        data = np.ascontiguousarray(image, dtype=self.dtype)
        if data.shape != self.shape[1:]:
            raise ValueError(f"a block is {self.shape[1:]}, got {data.shape}")
        os.pwrite(self._file.fileno(), data.tobytes(), block * self._block_bytes)

    def read(self, start: int, stop: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Blocks ``start..stop`` as an array; only rows ``rows[0]..rows[1]`` if given."""
        count = max(0, stop - start)
        if rows is None:
            raw = os.pread(
                self._file.fileno(), count * self._block_bytes, start * self._block_bytes
            )
            return np.frombuffer(raw, dtype=self.dtype).reshape(count, *self.shape[1:]).copy()
        row_bytes = self._block_bytes // self.shape[1]
        n_rows = max(0, rows[1] - rows[0])
        out = np.empty((count, n_rows, *self.shape[2:]), self.dtype)
        for i in range(count):  # one read per block: a crop costs its rows, not whole frames
            raw = os.pread(
                self._file.fileno(),
                n_rows * row_bytes,
                (start + i) * self._block_bytes + rows[0] * row_bytes,
            )
            out[i] = np.frombuffer(raw, dtype=self.dtype).reshape(out.shape[1:])
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        index = np.arange(self.shape[0])[first]
        if index.size == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
        lo, hi = int(index.min()), int(index.max()) + 1
        rows = None
        if rest and isinstance(rest[0], slice) and rest[0].step in (None, 1):
            r0, r1, _ = rest[0].indices(self.shape[1])
            rows, rest = (r0, max(r0, r1)), (slice(None), *rest[1:])
        return self.read(lo, hi, rows)[(index - lo, *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.asarray, (self.read(0, self.shape[0]),))


@dataclass
class MeanImage:
    """Running mean image of a movie, in photon units.

    The mean image at frame ``t`` is ``trend[t]`` times the block shapes interpolated at
    ``t``. The trend is the movie's overall brightness (bleaching, laser drift), read off the
    sums of whole frames; the block shapes are the block means divided by their trend, each
    pulled toward the movie's overall shape by ``shrink`` (0: all the way, 1: not at all),
    where the blocks differ by no more than their noise.

    Attributes
    ----------
    starts : ndarray of int
        First frame of each block.
    counts : ndarray of int
        Frames in each block.
    means : ndarray or BlockFile, shape (n_blocks, Y, X)
        Block shapes (float32; block means at trend 1, shrunk); a :class:`BlockFile` beyond
        :data:`IN_FILE_BYTES`.
    n_frames : int
        Frames in the movie.
    trend : ndarray, shape (n_frames,), optional
        Brightness of each frame relative to the movie's mean (ones if absent).
    shrink : ndarray, shape (Y, X), optional
        Weight each pixel gives its own block over the movie's overall shape (ones if absent).
    """

    starts: np.ndarray
    counts: np.ndarray
    means: np.ndarray | BlockFile
    n_frames: int
    trend: np.ndarray | None = None
    shrink: np.ndarray | None = None

    @property
    def centers(self) -> np.ndarray:
        """Centre of each block (frame units)."""
        return self.starts + (self.counts - 1) / 2.0

    @property
    def block_trend(self) -> np.ndarray:
        """Mean trend of each block."""
        if self.trend is None:
            return np.ones(len(self.counts))
        return np.add.reduceat(self.trend.astype(np.float64), self.starts) / self.counts

    def trend_at(self, t: np.ndarray) -> np.ndarray:
        """Trend at frames ``t`` (float64)."""
        t = np.atleast_1d(np.asarray(t))
        if self.trend is None:
            return np.ones(t.shape)
        idx = np.clip(np.rint(t).astype(int), 0, self.n_frames - 1)
        return self.trend[idx].astype(np.float64)

    @property
    def global_mean(self) -> np.ndarray:
        """Mean over all frames (Y, X)."""
        w = self.counts * self.block_trend / self.counts.sum()
        out = np.zeros(self.means.shape[1:], np.float64)
        for b in range(len(w)):  # block by block: the means may lie in a file
            out += w[b] * self.means[b]
        return out.astype(np.float32)

    def weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interpolation weights of each block for frames ``t``, and each frame's block.

        Returns
        -------
        block_weights : ndarray, shape (len(t), n_blocks)
        own_weight : ndarray, shape (len(t),)
            Weight with which frame ``t``'s own value enters its block's mean, times the
            block's interpolation weight (before shrinkage and trend).
        block : ndarray of int, shape (len(t),)
            The block holding frame ``t``.
        """
        t = np.asarray(t, dtype=float)
        c = self.centers
        nb = len(c)
        lam = np.zeros((t.size, nb))
        if nb == 1:
            lam[:, 0] = 1.0
        else:
            pos = np.interp(t, c, np.arange(nb))
            lo = np.clip(np.floor(pos).astype(int), 0, nb - 2)
            frac = pos - lo
            lam[np.arange(t.size), lo] = 1.0 - frac
            lam[np.arange(t.size), lo + 1] += frac
        block_of_t = np.clip(np.searchsorted(self.starts, t, side="right") - 1, 0, nb - 1)
        own = lam[np.arange(t.size), block_of_t] / self.counts[block_of_t]
        return lam, own, block_of_t

    def _shrink(self, region: tuple[slice, slice]) -> np.ndarray:
        if self.shrink is None:
            return np.ones((1, 1))
        return self.shrink[region].astype(np.float64)

    def images(
        self,
        t: np.ndarray,
        own_frames: np.ndarray | None = None,
        region: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> np.ndarray:
        """Mean image at frames ``t`` (float32, (len(t), Y, X)).

        Parameters
        ----------
        t : ndarray of int
            Frame indices.
        own_frames : ndarray, optional
            The frames ``t`` themselves (photon units, within ``region``); when given, each
            frame's own contribution is removed (leave-one-out).
        region : (slice, slice)
            The rows and columns wanted (default: the whole frame).
        """
        out64, own = self.blend(t, region)
        out = out64.astype(np.float32)
        if own_frames is not None:
            own = own.astype(np.float32)
            out = (out - own * own_frames) / (1.0 - own)
        return out.astype(np.float32, copy=False)

    def blend(
        self, t: np.ndarray, region: tuple[slice, slice] = (slice(None), slice(None))
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean image at frames ``t`` in float64, with each frame's own weight in it.

        Only the blocks the frames interpolate between are read.

        Returns
        -------
        image : ndarray, shape (len(t), Y, X)
        own : ndarray, shape (len(t), 1, 1) or (len(t), Y, X)
            Weight with which frame ``t``'s own value enters its mean image.
        """
        t = np.atleast_1d(np.asarray(t))
        lam, own_b, block = self.weights(t)
        used = np.flatnonzero(lam.any(axis=0))
        lo, hi = (int(used.min()), int(used.max()) + 1) if used.size else (0, 0)
        blocks = self.means[lo:hi, region[0], region[1]]
        r = self.trend_at(t)
        image = np.tensordot(lam[:, lo:hi] * r[:, None], blocks, axes=1)
        # scale * ((1 - w) / n + w * own_b), in float32 (a pass over the frames, not three)
        scale = r / self.block_trend[block]
        base = (scale / self.n_frames).astype(np.float32)[:, None, None]
        if self.shrink is None:
            return image, (scale * own_b).astype(np.float32)[:, None, None]
        slope = (scale * (own_b - 1.0 / self.n_frames)).astype(np.float32)[:, None, None]
        own = self.shrink[region][None] * slope
        own += base
        return image, own

    def noise_factor(
        self, t: np.ndarray, region: tuple[slice, slice] = (slice(None), slice(None))
    ) -> np.ndarray:
        """Variance of the mean image's noise at frames ``t``, as a fraction of one frame's.

        Returns
        -------
        ndarray, shape (len(t), 1, 1) or (len(t), Y, X)
            float32, with frames' noise taken as independent and of equal variance.
        """
        t = np.atleast_1d(np.asarray(t))
        lam, _, _ = self.weights(t)
        r2 = (self.trend_at(t) ** 2)[:, None, None]
        w = self._shrink(region)[None]
        n = self.n_frames
        r_b2 = self.block_trend**2
        # Frame f of block b enters with r / R_b * ((1 - w) / n + w lam_b / c_b); summed
        # over the frames, the (1 - w) / n part of every block at once, the rest over the
        # blocks the frames interpolate between.
        out = (1.0 - w) ** 2 / n**2 * float(np.sum(self.counts / r_b2))
        for b in np.flatnonzero(lam.any(axis=0)):
            lb = lam[:, b][:, None, None]
            c = self.counts[b]
            out = out + (2.0 * (1.0 - w) / n * w * lb + (w * lb) ** 2 / c) / r_b2[b]
        return (r2 * out).astype(np.float32)

    def to_dict(self) -> dict[str, object]:
        """Arrays and sizes, for saving."""
        return {
            "starts": self.starts,
            "counts": self.counts,
            "means": np.asarray(self.means),
            "n_frames": self.n_frames,
            "trend": self.trend,
            "shrink": self.shrink,
        }


def _block_store(n_blocks: int, shape: tuple[int, ...]) -> np.ndarray | BlockFile:
    """Make room for the block means: a file beyond :data:`IN_FILE_BYTES`, else memory.

    Memory too where no temporary file can be made (a warning says so).
    """
    if n_blocks * int(np.prod(shape)) * 4 > IN_FILE_BYTES:
        try:
            return BlockFile(n_blocks, shape)
        except OSError as err:  # no writable temporary folder: memory grows with length
            logger.warning("block means kept in memory (no temporary file: %s)", err)
    return np.empty((n_blocks, *shape), np.float32)


SHRINK_PIXELS = 9
"""Side of the square over which the spread of a pixel's block means is pooled with its
neighbours' before it is compared with their noise."""


def local_linear(y: np.ndarray, half: int) -> np.ndarray:
    """Straight line fitted to ``y`` within ``half`` samples of each sample, evaluated there.

    Where the window is cut by the ends it is one-sided, so a linear trend is followed to the
    ends without bias (a running mean would flatten it there).
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0

    def csum(v: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(v)])

    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    s0, s1, s2, y0, y1 = (
        c[hi] - c[lo] for c in (csum(np.ones(n)), csum(t), csum(t * t), csum(y), csum(t * y))
    )
    den = s0 * s2 - s1 * s1
    ok = den > 1e-9 * np.maximum(s0 * s2, 1.0)  # one sample: no slope
    slope = np.where(ok, (s0 * y1 - s1 * y0) / np.where(ok, den, 1.0), 0.0)
    return (y0 - slope * s1) / s0 + slope * t


def brightness_trend(totals: np.ndarray, half: int) -> np.ndarray | None:
    """Each frame's brightness relative to the movie's mean, from the sums of whole frames.

    ``None`` where the movie's mean is not positive (nothing to scale).
    """
    mean = float(np.mean(totals))
    if not np.isfinite(mean) or mean <= 0:
        return None
    trend = local_linear(totals, half) / mean
    return np.clip(trend, 0.05, None).astype(np.float32)


def compute_mean_image(
    read_frames: Callable[[int, int], np.ndarray],
    n_frames: int,
    *,
    window: int,
    to_photons: Callable[[np.ndarray], np.ndarray],
    chunk: int = 256,
) -> MeanImage:
    """Block means of a movie in one streaming pass, with its brightness trend.

    Each block's mean is divided by the trend (so a bleaching movie's blocks share one shape)
    and pulled toward the movie's overall shape as far as the blocks differ by no more than
    their noise: at pixels that do not change, the mean image then averages the whole movie,
    not one block, and its noise does not come and go from block to block.

    Parameters
    ----------
    read_frames : callable
        ``read_frames(start, stop) -> ndarray``.
    n_frames : int
        Frames in the movie.
    window : int
        Frames per block; the number of blocks is ``round(n_frames / window)`` (at least one).
        The trend is a straight line fitted within half a window of each frame.
    to_photons : callable
        Converts raw frames to photon units.
    chunk : int
        Frames read at once.

    Returns
    -------
    MeanImage
    """
    n_blocks = max(1, round(n_frames / window))
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(int)
    starts, counts = edges[:-1], np.diff(edges)
    means: np.ndarray | BlockFile | None = None
    sums: dict[int, np.ndarray] = {}  # blocks being summed (frames arrive in order)
    totals = np.zeros(n_frames)
    sq: np.ndarray | None = None  # sum of squares over the movie
    between: np.ndarray | None = None  # sum over blocks of count * mean^2
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        frames = to_photons(read_frames(start, stop)).astype(np.float64)
        if means is None:
            means = _block_store(n_blocks, frames.shape[1:])
            sq = np.zeros(frames.shape[1:])
            between = np.zeros(frames.shape[1:])
        assert sq is not None and between is not None
        totals[start:stop] = frames.sum(axis=(1, 2))
        sq += np.einsum("tyx,tyx->yx", frames, frames)
        block = np.searchsorted(edges, np.arange(start, stop), side="right") - 1
        for b in np.unique(block):
            part = frames[block == b].sum(axis=0)
            sums[b] = sums[b] + part if b in sums else part
        for b in [b for b in sums if edges[b + 1] <= stop]:  # complete: stored
            mean = sums.pop(b) / counts[b]
            between += counts[b] * mean * mean
            means[b] = mean.astype(np.float32)
    assert means is not None and sq is not None and between is not None and not sums
    trend = brightness_trend(totals, max(1, window // 2))
    image = MeanImage(starts=starts, counts=counts, means=means, n_frames=n_frames, trend=trend)
    r = image.block_trend
    for b in range(n_blocks):  # to shapes at trend 1
        means[b] = (means[b] / r[b]).astype(np.float32)
    if n_blocks > 1:
        # Per-frame variance within blocks (activity included), and the variance of each block
        # shape's noise; the blocks' spread about the overall shape beyond it is drift.
        var = np.clip(sq - between, 0.0, None) / max(n_frames - n_blocks, 1)
        frac = np.asarray(counts, float) / n_frames
        inv = 1.0 / (counts * r**2)  # a block shape's noise variance is var * inv[b]
        g = np.zeros_like(var)
        for b in range(n_blocks):
            g += frac[b] * means[b]
        spread = np.zeros_like(var)
        for b in range(n_blocks):
            spread += (means[b] - g) ** 2 / n_blocks
        # Expected spread without drift: var(shape_b - g), averaged over the blocks.
        expected = var * (np.mean(inv * (1 - 2 * frac)) + np.sum(frac**2 * inv))
        drift = np.clip(
            uniform_filter(spread, SHRINK_PIXELS, mode="nearest")
            - uniform_filter(expected, SHRINK_PIXELS, mode="nearest"),
            0.0,
            None,
        )
        own_noise = var * np.mean(inv)
        total = drift + own_noise
        w = np.where(total > 0, drift / np.where(total > 0, total, 1.0), 1.0)
        for b in range(n_blocks):
            means[b] = (g + w * (means[b] - g)).astype(np.float32)
        image.shrink = w.astype(np.float32)
    return image
