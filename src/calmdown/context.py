"""What the network sees around a frame: neighbouring frames and the time-averaged image.

The mean image is a running mean: the movie is cut into blocks of ``window`` frames, each block
averaged, and the block means are interpolated linearly in time, so bleaching and slow drift are
followed. A frame's own contribution is removed from its mean image (leave-one-out), so the
prediction of frame ``t`` never contains the noise of frame ``t``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calmdown.errors import InputError

__all__ = ["MeanImage", "compute_mean_image", "context_indices", "min_frames"]


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


@dataclass
class MeanImage:
    """Running mean image of a movie, in photon units.

    Attributes
    ----------
    starts : ndarray of int
        First frame of each block.
    counts : ndarray of int
        Frames in each block.
    means : ndarray, shape (n_blocks, Y, X)
        Block means (float32).
    n_frames : int
        Frames in the movie.
    """

    starts: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    n_frames: int

    @property
    def centers(self) -> np.ndarray:
        """Centre of each block (frame units)."""
        return self.starts + (self.counts - 1) / 2.0

    @property
    def global_mean(self) -> np.ndarray:
        """Mean over all frames (Y, X)."""
        w = self.counts / self.counts.sum()
        return np.tensordot(w, self.means, axes=1).astype(np.float32)

    def weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interpolation weights of each block for frames ``t``, and the weight of frame ``t``.

        Returns
        -------
        block_weights : ndarray, shape (len(t), n_blocks)
        own_weight : ndarray, shape (len(t),)
            Weight with which frame ``t``'s own value enters its mean image.
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
        return lam, own

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
        t = np.atleast_1d(np.asarray(t))
        lam, own = self.weights(t)
        out = np.tensordot(lam, self.means[:, region[0], region[1]], axes=1).astype(np.float32)
        if own_frames is not None:
            own = own.astype(np.float32)[:, None, None]
            out = (out - own * own_frames) / (1.0 - own)
        return out.astype(np.float32, copy=False)

    def noise_factor(self, t: np.ndarray) -> np.ndarray:
        """Variance of the mean image's noise at frames ``t``, as a fraction of one frame's."""
        lam, _ = self.weights(np.atleast_1d(np.asarray(t)))
        return (lam**2 / self.counts[None, :]).sum(axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, object]:
        """Arrays and sizes, for saving."""
        return {
            "starts": self.starts,
            "counts": self.counts,
            "means": self.means,
            "n_frames": self.n_frames,
        }


def compute_mean_image(
    read_frames: Callable[[int, int], np.ndarray],
    n_frames: int,
    *,
    window: int,
    to_photons: Callable[[np.ndarray], np.ndarray],
    chunk: int = 256,
) -> MeanImage:
    """Block means of a movie in one streaming pass.

    Parameters
    ----------
    read_frames : callable
        ``read_frames(start, stop) -> ndarray``.
    n_frames : int
        Frames in the movie.
    window : int
        Frames per block; the number of blocks is ``round(n_frames / window)`` (at least one).
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
    means: np.ndarray | None = None
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        frames = to_photons(read_frames(start, stop)).astype(np.float64)
        if means is None:
            means = np.zeros((n_blocks, *frames.shape[1:]), np.float64)
        block = np.searchsorted(edges, np.arange(start, stop), side="right") - 1
        for b in np.unique(block):
            means[b] += frames[block == b].sum(axis=0)
    assert means is not None
    means /= counts[:, None, None]
    return MeanImage(
        starts=starts, counts=counts, means=means.astype(np.float32), n_frames=n_frames
    )
