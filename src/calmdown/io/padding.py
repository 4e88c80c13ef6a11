"""Frame edges that were not measured: the padding motion correction leaves.

Registration shifts each frame and fills what moved in from outside the field of view with a
constant (0, or NaN; CaImAn's ``border_nan``, NoRMCorre, many in-house scripts). Those pixels
hold no measurement, and a constant where the noise model expects photons ruins it silently:
a registered 128 x 128 movie whose frames had moved by up to one pixel, zero-filled, read an
offset of 11241 ADU and a read noise of 374 ADU (100 and 1.8 without the padding), without an
error. So the first pass looks at the outermost row and column of every frame it reads and
stops with a message naming the file, the padding and the fix; :class:`CroppedReader` (``crop``
of :func:`calmdown.io.open_movie`, ``--crop``) then reads the rows and columns every frame
measured (:func:`measured_region`).

A line of ``L`` equal values counts as padding when it is NaN or infinite, or when the value
is too rare in the rest of the frame for ``L`` pixels to hold it by chance (``fraction ** L <
CHANCE``): photon-counting data whose dark edge reads 0 in most pixels is not padding. A frame
that is constant throughout is left to the checks that name it (a blank frame, a constant
movie).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from calmdown.errors import BlankFramesError, InputError
from calmdown.io.base import MovieReader, ReaderBase, check_finite

logger = logging.getLogger(__name__)

__all__ = [
    "CHANCE",
    "BlankFramesError",
    "CroppedReader",
    "EdgePadding",
    "blank_frames",
    "blank_mask",
    "checked",
    "checked_reader",
    "crop_of",
    "find_padding",
    "frame_runs",
    "frame_shape",
    "measured_region",
    "padding_message",
    "parse_crop",
    "region_of",
    "unchecked_blocks",
]

CHANCE = 1e-6
"""Largest chance that a line of the frame's length holds one value everywhere by chance."""

MIN_LINE = 8
"""Shortest edge line (pixels) that can be told from data by its constancy."""


@dataclass(frozen=True)
class EdgePadding:
    """Padding found in one frame: constant lines at its edges.

    Attributes
    ----------
    frame : int
        Index of the frame in the movie.
    value : float
        The fill value (NaN for non-finite fill).
    top, bottom, left, right : int
        Depth in rows or columns of the padding at each edge of that frame.
    """

    frame: int
    value: float
    top: int
    bottom: int
    left: int
    right: int

    def describe(self, shape: tuple[int, int]) -> str:
        """Return the padding in words, with the rows and columns measured in that frame."""
        fill = "NaN" if np.isnan(self.value) else f"{self.value:g}"
        sides = [
            f"{n} {what}{'s' if n > 1 else ''} at the {side}"
            for n, what, side in (
                (self.top, "row", "top"),
                (self.bottom, "row", "bottom"),
                (self.left, "column", "left"),
                (self.right, "column", "right"),
            )
            if n
        ]
        h, w = shape
        return (
            f"frame {self.frame} has {', '.join(sides)} filled with {fill} (measured there: "
            f"rows {self.top}:{h - self.bottom}, columns {self.left}:{w - self.right})"
        )


def _fill_depth(stack: np.ndarray) -> tuple[int, float]:
    """Return the depth and value of the padding at the top of ``stack`` (N, L); depth 0: none.

    The leading lines must hold one value everywhere (or be not finite throughout), a value
    too rare in the lines below them for ``L`` pixels to hold it by chance.
    """
    line = stack[0]
    first = float(line[0])
    if not np.isfinite(first):
        if not (~np.isfinite(line)).all():
            return 0, first
        depth = _depth(stack, float("nan"))
        return (0 if depth == len(stack) else depth), float("nan")  # a frame of NaN: blank
    if line.size < MIN_LINE or not (line == first).all():
        return 0, first
    depth = _depth(stack, first)
    rest = stack[depth:]
    if rest.size == 0:
        return 0, first  # a constant frame: not padding
    fraction = float(np.count_nonzero(rest == first)) / rest.size
    return (depth if fraction**line.size < CHANCE else 0), first


def _depth(lines: np.ndarray, value: float) -> int:
    """Return how many leading lines of ``lines`` (N, L) all hold ``value``."""
    full = (~np.isfinite(lines) if np.isnan(value) else lines == value).all(axis=1)
    return int(np.argmin(full)) if not full.all() else int(full.size)


def _frame_padding(frame: np.ndarray) -> tuple[float, dict[str, int]] | None:
    """Return the fill value and the depth of the padding at each edge of ``frame``, or None."""
    stacks = {"top": frame, "bottom": frame[::-1], "left": frame.T, "right": frame.T[::-1]}
    found: dict[str, int] = {}
    value = float("nan")
    for side, stack in stacks.items():
        depth, v = _fill_depth(stack)
        if depth:
            value = v
            found[side] = depth
    return (value, found) if found else None


def _candidates(block: np.ndarray) -> np.ndarray:
    """Return the indices of the frames whose outermost row or column is constant or not finite."""
    out = np.zeros(len(block), dtype=bool)
    for edge in (block[:, 0, :], block[:, -1, :], block[:, :, 0], block[:, :, -1]):
        with np.errstate(invalid="ignore"):
            out |= (edge == edge[:, :1]).all(axis=1) | ~np.isfinite(edge[:, 0])
    return np.flatnonzero(out)


def find_padding(block: np.ndarray, start: int = 0) -> EdgePadding | None:
    """Return the first frame of ``block`` (T, Y, X) with padding at an edge, or None.

    Only the outermost row and column of each frame are looked at unless one of them is
    constant, so a block costs a few comparisons per frame.

    Parameters
    ----------
    block : numpy.ndarray
        Frames ``start .. start + len(block)``.
    start : int
        Index of the block's first frame, for :attr:`EdgePadding.frame`.
    """
    if block.ndim != 3 or min(block.shape[1:]) < 2:
        return None
    for t in _candidates(block):
        found = _frame_padding(block[t])
        if found is not None:
            value, depths = found
            return EdgePadding(
                frame=start + int(t),
                value=value,
                **{side: depths.get(side, 0) for side in ("top", "bottom", "left", "right")},
            )
    return None


def unchecked_blocks(
    reader: MovieReader, chunk_pixels: int = 1 << 22
) -> Iterator[tuple[int, np.ndarray]]:
    """Read the whole movie in blocks of about ``chunk_pixels`` (16 MB of float32), in order.

    Yields ``(first frame, block)``. NaN and infinite values are returned, not refused: the
    passes that look for padding and blank frames are the ones that tell them apart.
    """
    n, h, w = reader.shape
    chunk_frames = max(1, min(n, chunk_pixels // max(h * w, 1)))
    checked = isinstance(reader, ReaderBase) and reader._check_values
    if checked:
        reader.skip_value_check()
    try:
        for a in range(0, n, chunk_frames):
            yield a, reader.read(a, min(n, a + chunk_frames))
    finally:
        if checked:
            reader._check_values = True


def measured_region(reader: MovieReader, *, chunk_pixels: int = 1 << 22) -> Region:
    """Return the frames, rows and columns that ``reader`` measured throughout (one pass).

    The largest padding (:func:`find_padding`) at each edge over all frames is cut away, and
    so are blank frames (:func:`blank_frames`) at the start and the end of the movie (a
    shutter that opened late, closed early); blank frames between measured ones are left for
    the first pass to refuse by number.

    Raises
    ------
    InputError
        When no pixel was measured in every frame, or every frame is blank.
    """
    n, h, w = reader.shape
    logger.info(
        "%s: one pass over %d frames for the frames, rows and columns measured throughout",
        reader.path or "the movie",
        n,
    )
    depth = dict.fromkeys(("top", "bottom", "left", "right"), 0)
    first, last = n, -1  # the first and last frames that are not blank
    for a, block in unchecked_blocks(reader, chunk_pixels):
        blank = blank_mask(block)
        seen = np.flatnonzero(~blank)
        if seen.size:
            first, last = min(first, a + int(seen[0])), a + int(seen[-1])
        for t in _candidates(block):
            found = None if blank[t] else _frame_padding(block[t])
            if found is not None:
                for side, d in found[1].items():
                    depth[side] = max(depth[side], d)
    if last < 0:
        raise InputError(
            "every frame holds one value in every pixel: nothing was measured; check that "
            "this is the recording you meant",
            path=reader.path,
        )
    y0, y1, x0, x1 = depth["top"], h - depth["bottom"], depth["left"], w - depth["right"]
    if y0 >= y1 or x0 >= x1:
        raise InputError(
            "no pixel was measured in every frame: the padding at the frame edges (motion "
            f"correction's) reaches {depth['top']} rows at the top, {depth['bottom']} at the "
            f"bottom, {depth['left']} columns at the left and {depth['right']} at the right of "
            f"{h} x {w} frames; register the movie again, or cut out the frames that moved most",
            path=reader.path,
        )
    return ((first, last + 1), (y0, y1), (x0, x1))


def padding_message(padding: EdgePadding, shape: tuple[int, int]) -> str:
    """Return the error message for movie frames of ``shape`` (Y, X) with ``padding``."""
    return (
        f"the frames have padding at their edges, as motion correction leaves: "
        f"{padding.describe(shape)}. Those pixels were not measured, and calmdown needs every "
        "pixel measured in every frame (a constant fill ruins the noise model): pass --crop "
        "auto to keep the rows and columns that every frame measured (open_movie(..., "
        "crop='auto') in Python), or --crop Y0:Y1,X0:X1; the outputs then have the crop's "
        "size. Or register the movie without a fill (CaImAn: border_nan='copy')"
    )


Crop = tuple[tuple[int, int], tuple[int, int]]
"""``((y0, y1), (x0, x1))``: the rows ``y0:y1`` and columns ``x0:x1`` kept."""

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""``((t0, t1), (y0, y1), (x0, x1))``: the frames ``t0:t1`` too."""

_RANGE = r"\s*(\d*)\s*:\s*(\d*)\s*"
_CROP = re.compile(rf"^(?:{_RANGE},)?{_RANGE},{_RANGE}$")


def parse_crop(text: str) -> Crop | Region:
    """Parse ``"Y0:Y1,X0:X1"`` or ``"T0:T1,Y0:Y1,X0:X1"`` (Python slices; empty: the edge).

    Negative bounds are not taken: count from the start. The movie's size is checked when the
    crop is applied (:class:`CroppedReader`); ``-1`` as an end stands for the edge.

    Examples
    --------
    >>> parse_crop("4:60,3:")
    ((4, 60), (3, -1))
    >>> parse_crop("10:,:,:")
    ((10, -1), (0, -1), (0, -1))
    """
    match = _CROP.match(text)
    if match is None:
        raise InputError(
            "--crop takes the rows and columns to keep as Y0:Y1,X0:X1 (e.g. 4:508,4:508), and "
            "the frames too as T0:T1,Y0:Y1,X0:X1 (e.g. 10:,:,:); a bound left out is the "
            f"edge; or auto. Got {text!r}"
        )
    given = match.groups() if match.group(1) is not None else match.groups()[2:]
    bounds = [int(v) if v else None for v in given]
    pairs = zip(bounds[::2], bounds[1::2], strict=True)
    return tuple((lo or 0, -1 if hi is None else hi) for lo, hi in pairs)  # type: ignore[return-value]


class CroppedReader(ReaderBase):
    """Frames ``t0:t1``, rows ``y0:y1`` and columns ``x0:x1`` of another reader.

    NaN or infinite values outside the crop are allowed (the padding it cuts away); inside it
    they raise as with any reader. Closing closes the reader wrapped.

    Parameters
    ----------
    reader : MovieReader
        The whole movie (a :class:`ReaderBase`).
    crop : Crop or Region
        Rows and columns kept, after the frames kept if given; ``-1`` as an end is the edge.
    """

    def __init__(self, reader: MovieReader, crop: Crop | Region) -> None:
        n, h, w = reader.shape
        (t0, t1), (y0, y1), (x0, x1) = crop if len(crop) == 3 else ((0, -1), *crop)
        t1, y1, x1 = n if t1 == -1 else t1, h if y1 == -1 else y1, w if x1 == -1 else x1
        if not (0 <= t0 < t1 <= n and 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(
                f"--crop {t0}:{t1},{y0}:{y1},{x0}:{x1} (frames, rows, columns) is not within "
                f"the movie, which has {n} frames of {h} rows and {w} columns",
                path=reader.path,
            )
        self.reader = reader
        self.frames = (t0, t1)
        self.crop: Crop = ((y0, y1), (x0, x1))
        self.path = reader.path
        self.shape = (t1 - t0, y1 - y0, x1 - x0)
        self.dtype = reader.dtype
        self.metadata = dict(reader.metadata, crop=[[y0, y1], [x0, x1]])
        if (t0, t1) != (0, n):
            self.metadata["frames_read"] = [t0, t1]
        if isinstance(reader, ReaderBase):
            reader.skip_value_check()

    @property
    def region(self) -> Region:
        """The frames, rows and columns read."""
        return (self.frames, *self.crop)

    def _repr_fields(self) -> str:
        (t0, t1), (y0, y1), (x0, x1) = self.region
        return f"crop={t0}:{t1},{y0}:{y1},{x0}:{x1}"

    def _reopen_kwargs(self) -> dict[str, Any] | None:
        return None  # pickled with the reader it wraps (which reopens its file)

    def _read(self, start: int, stop: int) -> np.ndarray:
        (y0, y1), (x0, x1) = self.crop
        if isinstance(self.reader, ReaderBase) and self.reader._check_values:
            self.reader.skip_value_check()  # again after unpickling, which reopens the file
        t0 = self.frames[0]
        block = self.reader.read(t0 + start, t0 + stop)
        out = np.ascontiguousarray(block[:, y0:y1, x0:x1])
        # Named as the file numbers its frames.
        return check_finite(out, t0 + start, path=self.path) if self._check_values else out

    def close(self) -> None:
        """Close the reader wrapped."""
        super().close()
        self.reader.close()


def _unskipped(reader: MovieReader) -> MovieReader:
    """Return the reader a :class:`calmdown.io.gaps.SkipFramesReader` wraps, else ``reader``."""
    while getattr(reader, "skips_blank_frames", False):
        reader = reader.reader  # type: ignore[attr-defined]
    return reader


def crop_of(reader: MovieReader) -> Crop | None:
    """Return the rows and columns ``reader`` reads (None for whole frames)."""
    reader = _unskipped(reader)
    return reader.crop if isinstance(reader, CroppedReader) else None


def region_of(reader: MovieReader) -> Region | None:
    """Return the frames, rows and columns ``reader`` reads (None for a whole movie)."""
    reader = _unskipped(reader)
    return reader.region if isinstance(reader, CroppedReader) else None


def frame_shape(reader: MovieReader) -> tuple[int, int]:
    """Return ``(Y, X)`` of the frames as stored: before any crop (ROIs are drawn on those)."""
    reader = _unskipped(reader)
    inner = reader.reader if isinstance(reader, CroppedReader) else reader
    return (int(inner.shape[1]), int(inner.shape[2]))


def blank_frames(block: np.ndarray) -> np.ndarray:
    """Return the indices of the frames of ``block`` (T, Y, X) that hold one value everywhere.

    A frame of a recording never does by chance: it is a closed shutter, or a frame the
    acquisition dropped and filled. (A block of nothing else is left to the checks that name
    a constant movie.)
    """
    blank = blank_mask(block)
    return np.zeros(0, dtype=np.intp) if blank.all() else np.flatnonzero(blank)


def blank_mask(block: np.ndarray) -> np.ndarray:
    """Return whether each frame of ``block`` holds one value (or none finite) everywhere.

    Only frames whose first row is so are compared in full: a pass over the movie costs a
    row per frame.
    """
    flat = block.reshape(len(block), -1)
    out = np.zeros(len(block), dtype=bool)
    if flat.shape[1] < 2:
        return out
    row = flat[:, : block.shape[-1]]
    with np.errstate(invalid="ignore"):
        maybe = np.flatnonzero((row == row[:, :1]).all(axis=1) | ~np.isfinite(row[:, 0]))
        for t in maybe:
            out[t] = bool((flat[t] == flat[t, 0]).all() or (~np.isfinite(flat[t])).all())
    return out


def frame_runs(frames: np.ndarray) -> str:
    """Describe sorted frame indices as runs: ``"0-9, 150"``."""
    parts, start = [], None
    for i, t in enumerate(frames):
        if start is None:
            start = t
        if i + 1 == len(frames) or frames[i + 1] != t + 1:
            parts.append(f"{start}" if start == t else f"{start}-{t}")
            start = None
    return ", ".join(parts)


def checked(
    read_frames: Callable[[int, int], np.ndarray], name: object | None = None, first: int = 0
) -> Callable[[int, int], np.ndarray]:
    """Return ``read_frames`` stopping with :class:`InputError` at padded or blank frames.

    ``first``: the file's number of frame 0 of ``read_frames`` (frames are named in the file's
    numbering when a crop cut frames off its start). A ``read_frames`` that is checked already
    is returned as it is: its blocks are not checked twice.
    """
    if getattr(read_frames, "checked", False):
        return read_frames

    def read(start: int, stop: int) -> np.ndarray:
        block = read_frames(start, stop)
        start, stop = start + first, stop + first
        blank = blank_frames(block)
        if blank.size:
            value = float(block[blank[0]].flat[0])
            frames = blank + start
            gaps = np.flatnonzero(np.diff(frames) > 1)
            run_start, run_end = frames[0], frames[gaps[0] if gaps.size else -1]  # the first run
            example = (
                f"movie[{run_end + 1}:]"
                if run_start == 0
                else f"movie[:{run_start}] and movie[{run_end + 1}:]"
            )
            raise BlankFramesError(
                f"frame{'s' if blank.size > 1 else ''} {frame_runs(frames)} of frames "
                f"{start}:{stop} hold{'' if blank.size > 1 else 's'} one value in every pixel "
                f"({value:g}): blank frames (a closed shutter, frames the acquisition dropped) "
                "measured nothing, and they ruin the noise model (one zero frame in 300 read the "
                "gain 3.5 times too high); cut them out of the movie (--crop auto cuts those at "
                f"the start and the end; e.g. {example} in Python, "
                "Image > Stacks > Tools > Slice Remover in Fiji), or split the recording at them",
                path=name,
            )
        padding = find_padding(block, start)
        if padding is not None:
            raise InputError(padding_message(padding, block.shape[1:]), path=name)
        return block

    read.checked = True  # type: ignore[attr-defined]
    return read


def checked_reader(reader: MovieReader) -> Callable[[int, int], np.ndarray]:
    """Return :func:`checked` ``reader.read``, naming frames as the file numbers them."""
    region = region_of(reader)
    return checked(reader.read, reader.path, first=0 if region is None else region[0][0])
