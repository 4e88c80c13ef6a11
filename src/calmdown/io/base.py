"""The :class:`MovieReader` protocol and the checks that every reader shares.

A reader gives frames ``start:stop`` of a movie of shape ``(T, Y, X)`` as a fresh
``float32`` array, without loading the rest of the movie. Every reader builds on
:class:`ReaderBase` (length, context manager, repr, pickling and the checks of ``read``); the
HDF5, zarr, ``.npy`` and suite2p readers build on its array-backed :class:`SlicedReader`.
"""

from __future__ import annotations

import logging
import mmap
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, SupportsIndex, TypeVar, runtime_checkable

import numpy as np

from calmdown.errors import BlankFramesError, InputError

logger = logging.getLogger(__name__)

_Reader = TypeVar("_Reader", bound="ReaderBase")

__all__ = [
    "READ_FORMATS",
    "ArrayReader",
    "MovieReader",
    "ReaderBase",
    "SlicedReader",
    "check_dtype",
    "check_finite",
    "check_range",
    "movie_axes",
]

#: File extensions that :func:`calmdown.io.open_movie` reads, by format.
READ_FORMATS: dict[str, str] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".zarr": "zarr",
    ".npy": "npy",
    ".nwb": "nwb",
    ".bin": "suite2p",
    ".sbx": "sbx",
}


@runtime_checkable
class MovieReader(Protocol):
    """A lazy, read-only movie of shape ``(T, Y, X)``.

    Attributes
    ----------
    path : Path or None
        The file read, or None for an in-memory array.
    shape : tuple of int
        ``(T, Y, X)``: frames, rows, columns.
    dtype : numpy.dtype
        The data type stored on disk; :meth:`read` always returns ``float32``.
    metadata : dict
        What the file says about the recording (e.g. ``frame_rate`` in Hz); may be empty.
    """

    path: Path | None
    shape: tuple[int, int, int]
    dtype: np.dtype
    metadata: dict[str, object]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Return frames ``start:stop``: a new ``float32`` array ``(stop - start, Y, X)``."""
        ...

    def close(self) -> None:
        """Release the file; later reads fail."""
        ...

    def __len__(self) -> int: ...

    def __enter__(self) -> MovieReader: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def check_dtype(dtype: np.dtype, *, path: object | None = None, what: str = "the movie") -> None:
    """Raise :class:`InputError` unless `dtype` is a real integer or floating type.

    Parameters
    ----------
    dtype : numpy.dtype
        The data type to check.
    path : path-like or None
        The file, named in the message.
    what : str
        What holds the data, for the message when there is no file.

    Raises
    ------
    InputError
        For bool, complex, object, string, structured and date types.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iuf":
        return
    kinds = {
        "b": "boolean (a mask, not intensities)",
        "c": "complex",
        "O": "Python objects",
        "U": "text",
        "S": "bytes",
        "V": "structured records",
        "M": "dates",
        "m": "time differences",
    }
    found = kinds.get(dtype.kind, "non-numeric")
    subject = "data" if path is not None else what
    raise InputError(
        f"{subject} has data type {dtype} ({found}); calmdown needs real intensities "
        "(an integer or floating-point type); convert the data, e.g. take the magnitude of "
        "complex values",
        path=path,
    )


def movie_axes(
    shape: tuple[int, ...],
    *,
    path: object | None = None,
    axes: str | None = None,
    what: str = "the array",
) -> tuple[int, ...]:
    """Choose which axes of `shape` are ``(T, Y, X)``, dropping singleton axes if needed.

    A movie may carry extra axes of length 1, e.g. ``(T, 1, Y, X)`` for one channel; they are
    dropped (leftmost first) until three axes remain.

    Parameters
    ----------
    shape : tuple of int
        The shape stored.
    path : path-like or None
        The file, named in error messages.
    axes : str or None
        Axis letters as the file labels them (e.g. ``"TZYX"``), shown in error messages.
    what : str
        What holds the data, for messages when there is no file.

    Returns
    -------
    tuple of int
        The indices of the three axes kept, in order.

    Raises
    ------
    InputError
        When the data are not a movie: fewer than three axes, or more than three axes of
        length above 1.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    subject = "the file" if path is not None else what
    labelled = f"{shape} (axes {axes})" if axes and len(axes) == ndim else f"{shape}"
    if ndim == 2:
        raise InputError(
            f"expected a 3-D movie (T, Y, X) but {subject} holds a single 2-D image of shape "
            f"{shape}; pass a time series of frames",
            path=path,
        )
    if ndim < 2:
        raise InputError(
            f"expected a 3-D movie (T, Y, X) but {subject} holds a {ndim}-D array of shape "
            f"{shape}; pass a time series of 2-D frames",
            path=path,
        )
    keep = list(range(ndim))
    for axis in range(ndim):
        if len(keep) == 3:
            break
        if shape[axis] == 1:
            keep.remove(axis)
    if len(keep) != 3:
        raise InputError(
            f"expected a 3-D movie (T, Y, X) but {subject} holds a {ndim}-D array of shape "
            f"{labelled}; calmdown expects axes T, Y, X (extra axes of length 1 are dropped); "
            "select a single channel or plane and save it as a (T, Y, X) movie",
            path=path,
        )
    return tuple(keep)


def check_finite(block: np.ndarray, start: int, *, path: object | None = None) -> np.ndarray:
    """Raise :class:`InputError` if a block of frames holds NaN or infinite values.

    Integer blocks pass without a look. Readers call this on every block they return, so a bad
    value anywhere in a movie stops the first pass over it, before training.

    Parameters
    ----------
    block : numpy.ndarray
        Frames ``start .. start + len(block)``.
    start : int
        Index of the first frame of `block`, for the message.
    path : path-like or None
        The file, named in the message.

    Returns
    -------
    numpy.ndarray
        `block` itself.

    Raises
    ------
    InputError
        Naming how many values are bad and where the first one is.
    """
    if block.dtype.kind != "f" or block.size == 0:
        return block
    finite = np.isfinite(block)
    if finite.all():
        return block
    from calmdown.io.padding import find_padding, padding_message  # it builds on this module

    bad = int(block.size - np.count_nonzero(finite))
    empty = np.flatnonzero(~finite.reshape(len(block), -1).any(axis=1))
    if empty.size:
        raise BlankFramesError(
            f"frame{'s' if empty.size > 1 else ''} {', '.join(str(start + int(t)) for t in empty)}"
            f" of frames {start}:{start + len(block)} hold{'' if empty.size > 1 else 's'} no "
            "finite value: blank frames (frames "
            "the acquisition dropped) measured nothing; cut them out of the movie, or split the "
            "recording at them",
            path=path,
        )
    t, y, x = (int(i) for i in np.argwhere(~finite)[0])
    # The first frame with bad values: NaN padding there gets the crop as its fix (a frame
    # before it may hold padding of another fill, which is not what stops this read).
    padding = find_padding(block[t : t + 1], start + t)
    if padding is not None and np.isnan(padding.value):
        raise InputError(padding_message(padding, block.shape[1:]), path=path)
    stop = start + len(block)
    raise InputError(
        f"frames {start}:{stop} hold {bad} NaN or infinite value{'s' if bad > 1 else ''} (the "
        f"first at frame {start + t}, row {y}, column {x}; values beyond float32's range, "
        "3.4e38, count as infinite); calmdown needs finite intensities: "
        "replace them (e.g. with the same pixel in neighbouring frames) or cut those frames out",
        path=path,
    )


def check_range(start: int, stop: int, length: int) -> tuple[int, int]:
    """Check ``0 <= start <= stop <= length``.

    Parameters
    ----------
    start, stop : int
        The frames asked for.
    length : int
        The number of frames.

    Returns
    -------
    tuple of int
        `start` and `stop` as Python ints.

    Raises
    ------
    ValueError
        When the range is out of bounds (a programming error, not a bad file).
    """
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= length:
        raise ValueError(
            f"frames {start}:{stop} are out of range for a movie of {length} frames; "
            f"need 0 <= start <= stop <= {length}"
        )
    return start, stop


def _reopen(cls: type[ReaderBase], kwargs: dict[str, Any]) -> ReaderBase:
    """Open a reader again from its constructor arguments (for pickling to other processes)."""
    return cls(**kwargs)


class ReaderBase(ABC):
    """What every :class:`MovieReader` shares; a reader implements :meth:`_read` and extends.

    Gives ``len()``, use as a context manager (closing on exit), a ``repr`` naming the class,
    file, shape and dtype, pickling by reopening the file, and :meth:`read`, which checks the
    range and that the reader is open before calling the reader's :meth:`_read`.

    A subclass sets :attr:`path`, :attr:`shape`, :attr:`dtype` and :attr:`metadata`, and
    overrides :meth:`_read`, and as needed :meth:`close` (calling this one),
    :meth:`_repr_fields` and :meth:`_reopen_kwargs`.
    """

    path: Path | None
    shape: tuple[int, int, int]
    dtype: np.dtype
    metadata: dict[str, object]
    _closed: bool = False
    _check_values: bool = True

    def __len__(self) -> int:
        return self.shape[0]

    def skip_value_check(self) -> None:
        """Return NaN and infinite values instead of raising on them.

        For a reader wrapped by one that checks only part of each frame (a crop that cuts the
        NaN padding of motion correction away).
        """
        self._check_values = False

    def _repr_fields(self) -> str:
        """Return ``name=value`` text shown in the repr between the path and the shape."""
        return ""

    def __repr__(self) -> str:
        where = f" {str(self.path)!r}" if self.path is not None else ""
        fields = self._repr_fields()
        extra = f" {fields}" if fields else ""
        return f"<{type(self).__name__}{where}{extra} shape={self.shape} dtype={self.dtype}>"

    def __enter__(self: _Reader) -> _Reader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _reopen_kwargs(self) -> dict[str, Any] | None:
        """Return the constructor arguments that open this reader again in another process.

        None (the default, for in-memory data) pickles the reader's attributes instead.
        """
        return None

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        kwargs = self._reopen_kwargs()
        if kwargs is None:
            return super().__reduce_ex__(protocol)
        return (_reopen, (type(self), kwargs))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Return frames ``start:stop`` as a new ``float32`` array.

        Parameters
        ----------
        start, stop : int
            First frame and one past the last, with ``0 <= start <= stop <= T``.

        Returns
        -------
        numpy.ndarray
            Shape ``(stop - start, Y, X)``, dtype ``float32``, C-contiguous, owning its data.

        Raises
        ------
        ValueError
            When the range is out of bounds or the reader is closed.
        InputError
            When the frames cannot be read or decoded (a truncated or corrupt file), or hold
            NaN or infinite values; the message names the file.
        """
        start, stop = check_range(start, stop, self.shape[0])
        if self._closed:
            raise ValueError(f"{self!r} is closed; open the movie again to read it")
        return self._read(start, stop)

    @abstractmethod
    def _read(self, start: int, stop: int) -> np.ndarray:
        """Return frames ``start:stop`` (a checked range of an open reader), as :meth:`read`."""

    def _to_float32(self, block: np.ndarray, start: int) -> np.ndarray:
        """Copy frames ``start:start + len(block)`` to a new ``float32`` array, checked finite."""
        # np.array copies: the result never shares memory with a memory map or the caller's array.
        with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: caught next
            out = np.array(block, dtype=np.float32, order="C", copy=True)
        release_mapped_pages(block)
        if not self._check_values:
            return out
        return check_finite(out, start, path=self.path)

    def close(self) -> None:
        """Release the file; reading afterwards raises ValueError."""
        self._closed = True


_byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds", None)  # numpy 2 / 1


def release_mapped_pages(block: np.ndarray) -> None:
    """Drop the pages of a memory-mapped file that ``block`` views from resident memory.

    Pages of a file mapping that were read stay counted in the process's resident memory
    until the mapping is closed: reading a 5 GB TIFF through once would make the run's
    peak memory 5 GB. Pages of a shared mapping stay in the system's page cache (written
    ones reach the file), so reading them again costs no disk access. Does nothing where
    ``block`` is not a view of an ``np.memmap`` opened shared (mode ``"r"``, ``"r+"`` or
    ``"w+"``): the pages of a copy-on-write map (mode ``"c"``) hold changes made in memory
    only, which dropping them would lose.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    mode = None
    base: Any = block
    while isinstance(base, np.ndarray):
        if mode is None and isinstance(base, np.memmap):
            mode = base.mode
        base = base.base
    shared = mode in ("r", "r+", "w+")  # np.memmap keeps the short names
    if advice is None or not shared or not isinstance(base, mmap.mmap) or block.size == 0:
        return
    try:
        start = np.frombuffer(base, dtype=np.uint8).ctypes.data  # where the mapping begins
    except (TypeError, ValueError):  # a closed mapping: leave it
        return
    low, high = _byte_bounds(block)
    first = (low - start) // mmap.PAGESIZE * mmap.PAGESIZE
    length = min(high - start, len(base)) - first
    if first >= 0 and length > 0:
        base.madvise(advice, first, length)


class SlicedReader(ReaderBase):
    """A :class:`MovieReader` over any array-like that supports basic slicing.

    The base of the HDF5, zarr, ``.npy`` and suite2p readers and of :class:`ArrayReader`.

    Parameters
    ----------
    array : array-like
        Has ``shape``, ``dtype`` and ``__getitem__`` with slices (numpy, h5py, zarr, dask).
    path : Path or None
        The file it comes from, named in error messages.
    metadata : dict or None
        What the file says about the recording.
    axes : str or None
        Axis letters from the file, for error messages.
    what : str
        What holds the data, for messages when there is no file.
    """

    def __init__(
        self,
        array: Any,
        *,
        path: Path | None = None,
        metadata: dict[str, object] | None = None,
        axes: str | None = None,
        what: str = "the array",
    ) -> None:
        self.path = path
        self.metadata = dict(metadata or {})
        self.dtype = np.dtype(array.dtype)
        check_dtype(self.dtype, path=path, what=what)
        full_shape = tuple(int(n) for n in array.shape)
        keep = movie_axes(full_shape, path=path, axes=axes, what=what)
        self._array = array
        self._time_axis = keep[0]
        self._index = tuple(slice(None) if axis in keep else 0 for axis in range(len(full_shape)))
        t, y, x = (full_shape[axis] for axis in keep)
        self.shape = (t, y, x)

    def _fetch(self, start: int, stop: int) -> np.ndarray:
        """Return frames ``start:stop`` in the stored dtype; may be a view of the source."""
        index = list(self._index)
        index[self._time_axis] = slice(start, stop)
        return np.asarray(self._array[tuple(index)])

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._to_float32(self._fetch(start, stop), start)


class ArrayReader(SlicedReader):
    """Wrap an in-memory movie as a :class:`MovieReader`.

    No copy is made; :meth:`read` returns ``float32`` copies of the frames asked for.

    Parameters
    ----------
    array : numpy.ndarray
        Shape ``(T, Y, X)`` (extra axes of length 1 are dropped), any integer or float dtype.
        Other array-likes with ``shape``, ``dtype`` and slicing (dask, zarr) work as well.

    Raises
    ------
    InputError
        When `array` is not a movie or not of a real numeric type.

    Examples
    --------
    >>> import numpy as np
    >>> reader = ArrayReader(np.zeros((10, 4, 5), dtype=np.uint16))
    >>> len(reader), reader.shape
    (10, (10, 4, 5))
    >>> reader.read(2, 5).dtype
    dtype('float32')
    """

    def __init__(self, array: np.ndarray) -> None:
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):
            array = np.asarray(array)
        super().__init__(array, path=None, what="the array")


def movie_like(shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is a movie, perhaps after dropping axes of length 1."""
    try:
        movie_axes(shape)
    except InputError:
        return False
    return True


def describe_found(found: list[tuple[str, tuple[int, ...]]]) -> str:
    """List names and shapes for an error message (at most 20)."""
    shown = ", ".join(f"'{name}' {shape}" for name, shape in found[:20])
    more = f" and {len(found) - 20} more" if len(found) > 20 else ""
    return shown + more


def pick_only_movie(found: list[tuple[str, tuple[int, ...]]], path: Path, kind: str) -> str:
    """Name of the only movie-shaped entry of a container file.

    Parameters
    ----------
    found : list of (name, shape)
        Every dataset (HDF5) or array (zarr) in the file.
    path : Path
        The file, for the message.
    kind : str
        ``"dataset"`` or ``"array"``, for the message.

    Raises
    ------
    InputError
        If there is none or several, listing what there is and saying to pass ``--key``.
    """
    movies = [(name, shape) for name, shape in found if movie_like(shape)]
    if len(movies) == 1:
        logger.debug("%s: using the only 3-D %s '%s'", path, kind, movies[0][0])
        return movies[0][0]
    article = "an" if kind[0] in "aeiou" else "a"
    if not movies:
        listing = describe_found(found) if found else f"no {kind}s at all"
        raise InputError(
            f"holds no 3-D {kind} (T, Y, X); found {listing}; save the movie as {article} "
            f"{kind} of shape (T, Y, X)",
            path=path,
        )
    raise InputError(
        f"holds several 3-D {kind}s: {describe_found(movies)}; choose one with --key "
        f"(key= in Python), e.g. --key {movies[0][0]}",
        path=path,
    )
