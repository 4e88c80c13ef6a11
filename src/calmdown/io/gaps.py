"""Blank frames in the middle of a recording: read the movie without them.

A frame that holds one value in every pixel (or none that is finite) measured nothing: a
closed shutter between trials, a frame the acquisition dropped and filled. At the start and
the end of a movie ``--crop auto`` cuts them; between measured frames they are gaps in time.
:func:`find_blank_frames` finds them in one pass, and :class:`SkipFramesReader` reads the movie
as if they had been cut out, so the noise model, the mean image, training and denoising see
only measured frames (the frames on either side of a gap serve as each other's context, as
they would in a movie cut by hand). :class:`BlankFrames` maps the frames read back to the
file's numbering, so that every output keeps the recording's frame count and timing with the
blank frames passed through as they were (:func:`calmdown.pipeline.iter_apply`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import MovieReader, ReaderBase
from calmdown.io.padding import blank_mask, frame_runs, unchecked_blocks

logger = logging.getLogger(__name__)

__all__ = ["MAX_BLANK_SHARE", "BlankFrames", "SkipFramesReader", "find_blank_frames"]

MAX_BLANK_SHARE = 0.5
"""Largest share of a movie's frames that may be blank; beyond it the recording is refused
(it is mostly something other than a recording, and what is left would be short)."""


@dataclass(frozen=True)
class BlankFrames:
    """Where a movie's blank frames are, and what they hold.

    Attributes
    ----------
    n_frames : int
        Frames of the movie, blank ones included.
    blank : ndarray of int
        Indices of the blank frames (sorted).
    values : ndarray of float
        The one value each blank frame holds (NaN for a frame of no finite value).
    """

    n_frames: int
    blank: np.ndarray
    values: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Indices of the measured frames (sorted)."""
        mask = np.ones(self.n_frames, dtype=bool)
        mask[self.blank] = False
        return np.flatnonzero(mask)

    def span(self, start: int, stop: int) -> tuple[int, int]:
        """Return the movie frames that measured frames ``start:stop`` (of those kept) stand for.

        Each measured frame takes the blank frames just before it, and the last measured
        frame those after it too, so that consecutive ranges cover the movie once; an empty
        range takes the blank frames before measured frame ``start``.
        """
        kept = self.kept
        lo = 0 if start == 0 else int(kept[start - 1]) + 1
        if stop >= len(kept):
            return lo, self.n_frames
        # An empty range stands for the blank frames before measured frame ``start``.
        return lo, int(kept[stop]) if stop == start else int(kept[stop - 1]) + 1

    def to_kept(self, start: int, stop: int) -> tuple[int, int]:
        """Return the measured frames (indices among those kept) in movie frames ``start:stop``."""
        kept = self.kept
        return int(np.searchsorted(kept, start)), int(np.searchsorted(kept, stop))

    def describe(self) -> str:
        """Frames as runs, for messages: ``"50-52, 300"``."""
        return frame_runs(self.blank)

    def to_dict(self) -> dict[str, Any]:
        """Plain types (for the run's JSON summary)."""
        return {
            "frames": [int(t) for t in self.blank],
            "values": [None if np.isnan(v) else float(v) for v in self.values],
        }


def find_blank_frames(reader: MovieReader, *, chunk_pixels: int = 1 << 22) -> BlankFrames:
    """Find the blank frames of ``reader`` (one pass over the movie).

    Raises
    ------
    InputError
        When more than :data:`MAX_BLANK_SHARE` of the frames are blank.
    """
    n = reader.shape[0]
    logger.info("%s: one pass over %d frames for blank frames", reader.path or "the movie", n)
    blank: list[int] = []
    values: list[float] = []
    # A frame of NaN is blank; the measured frames are checked when they are read.
    for a, block in unchecked_blocks(reader, chunk_pixels):
        for t in np.flatnonzero(blank_mask(block)):
            first = float(block[t].flat[0])
            blank.append(a + int(t))
            values.append(first if np.isfinite(first) else float("nan"))
    if len(blank) > MAX_BLANK_SHARE * n:
        raise InputError(
            f"{len(blank)} of its {n} frames hold one value in every pixel (blank frames): "
            "more than half of this movie measured nothing; check that this is the recording "
            "you meant",
            path=reader.path,
        )
    return BlankFrames(n, np.asarray(blank, dtype=np.intp), np.asarray(values, dtype=np.float64))


class SkipFramesReader(ReaderBase):
    """Another reader's movie without its blank frames.

    Frame ``i`` of this reader is frame ``blank.kept[i]`` of the one wrapped; each read takes
    the runs of consecutive measured frames it needs, never a blank frame. Closing closes the
    reader wrapped.

    Parameters
    ----------
    reader : MovieReader
        The whole movie.
    blank : BlankFrames
        Its blank frames (:func:`find_blank_frames`).
    """

    skips_blank_frames = True
    """Marks the readers :func:`calmdown.io.padding.crop_of` and its kin look through."""

    def __init__(self, reader: MovieReader, blank: BlankFrames) -> None:
        n, h, w = reader.shape
        if blank.n_frames != n:
            raise ValueError(f"blank frames of a {blank.n_frames}-frame movie, given {n} frames")
        self.reader = reader
        self.blank = blank
        self._kept = blank.kept
        self.path = reader.path
        self.shape = (len(self._kept), h, w)
        self.dtype = reader.dtype
        self.metadata = dict(reader.metadata, blank_frames=blank.to_dict()["frames"])
        # Runs of consecutive measured frames: run j holds kept[starts[j]:starts[j + 1]].
        breaks = np.flatnonzero(np.diff(self._kept) > 1) + 1
        self._starts = np.concatenate([[0], breaks, [len(self._kept)]]).astype(np.intp)

    def _repr_fields(self) -> str:
        return f"without blank frames {self.blank.describe()}"

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.float32)
        j = int(np.searchsorted(self._starts, start, side="right")) - 1
        i = start
        while i < stop:
            run_stop = min(stop, int(self._starts[j + 1]))
            a = int(self._kept[i])
            out[i - start : run_stop - start] = self.reader.read(a, a + run_stop - i)
            i, j = run_stop, j + 1
        return out

    def close(self) -> None:
        """Close the reader wrapped."""
        super().close()
        self.reader.close()
