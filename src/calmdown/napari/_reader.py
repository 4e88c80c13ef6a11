"""napari reader contribution: open the movies calmdown reads as image layers.

Files go through :func:`calmdown.io.open_movie`, so napari sees exactly the ``(T, Y, X)``
movie that calmdown would denoise (the same dataset of an HDF5 file, the same channel of a
TIFF, singleton axes dropped).

Loading
-------
A movie of at most :data:`IN_MEMORY_BYTES` (in its stored type) is read whole into a numpy
array and the file is closed: scrolling through time is then instant. A larger movie becomes a
``dask.array`` whose blocks of frames are read from the still-open file on demand (one lock
serialises reads, so napari's rendering and a running denoiser can share it); the file is
closed when the array is garbage-collected. Integer movies of 8 or 16 bits keep their type,
other types are shown as float32 (what calmdown computes in).

:func:`napari_get_reader` returns None for files it cannot open as a movie (wrong extension,
a 2-D image, an HDF5 file holding several movies), so napari can try its other readers.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io import READ_FORMATS, MovieReader, open_movie

logger = logging.getLogger(__name__)

__all__ = ["IN_MEMORY_BYTES", "movie_layer_data", "napari_get_reader", "read_movies"]

#: Movies up to this size (bytes, stored type) are loaded whole; larger ones lazily with dask.
IN_MEMORY_BYTES = 256 * 2**20
#: Target size of one lazily read block of frames (bytes, shown type).
BLOCK_BYTES = 16 * 2**20

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerData]] | None:
    """Return a function that reads ``path`` into image layers, or None if it is not ours.

    Parameters
    ----------
    path : str or sequence of str
        A file (or ``.zarr`` folder), or several.

    Returns
    -------
    callable or None
        :func:`read_movies`, or None when some path has an extension calmdown does not read
        or cannot be opened as a ``(T, Y, X)`` movie.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    for one in paths:
        candidate = Path(one)
        if candidate.suffix.lower() not in READ_FORMATS:
            return None
        try:
            with open_movie(candidate):
                pass
        except InputError as err:
            logger.info("calmdown's reader declines %s: %s", candidate, err)
            return None
    return read_movies


def read_movies(path: str | Sequence[str]) -> list[LayerData]:
    """Read one image layer per movie file.

    Parameters
    ----------
    path : str or sequence of str
        Files that :func:`calmdown.io.open_movie` reads.

    Returns
    -------
    list of (data, metadata, "image")
        napari layer data tuples, named after the files.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [movie_layer_data(Path(one)) for one in paths]


def movie_layer_data(path: Path, *, in_memory_bytes: int = IN_MEMORY_BYTES) -> LayerData:
    """Open one movie as a napari image layer data tuple.

    Parameters
    ----------
    path : pathlib.Path
        The movie file.
    in_memory_bytes : int
        Movies up to this size (stored type) are loaded whole; larger ones lazily.

    Returns
    -------
    tuple
        ``(data, layer_kwargs, "image")``; ``data`` is a numpy array or a dask array.

    Raises
    ------
    InputError
        When the file is not a movie calmdown reads; the message names the file and the fix.
    """
    reader = open_movie(path)
    try:
        shown = _shown_dtype(reader.dtype)
        n_bytes = int(np.prod(reader.shape)) * np.dtype(reader.dtype).itemsize
        meta = {k: v for k, v in reader.metadata.items() if isinstance(v, (int, float, str))}
        meta["calmdown_path"] = str(path)
        if n_bytes <= in_memory_bytes:
            data: Any = reader.read(0, reader.shape[0]).astype(shown, copy=False)
            reader.close()
        else:
            data = _lazy_array(reader, shown)
    except BaseException:
        reader.close()
        raise
    name = path.name[: -len(path.suffix)] if path.suffix else path.name
    return data, {"name": name, "metadata": meta}, "image"


def _shown_dtype(stored: np.dtype) -> np.dtype:
    """Keep 8- and 16-bit integers (float32 holds them exactly); float32 otherwise."""
    stored = np.dtype(stored)
    if stored.kind in "iu" and stored.itemsize <= 2:
        return stored
    return np.dtype(np.float32)


class _FrameSource:
    """An array-like view of a :class:`MovieReader` for ``dask.array.from_array``.

    Slices along time are read with :meth:`MovieReader.read`; the rest of the index is
    applied to the frames read.
    """

    def __init__(self, reader: MovieReader, dtype: np.dtype) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self._lock = threading.Lock()
        weakref.finalize(self, reader.close)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        t_key, rest = key[0], key[1:]
        n = self.shape[0]
        if isinstance(t_key, (int, np.integer)):
            t = int(t_key) + (n if t_key < 0 else 0)
            return self._read(t, t + 1)[0][rest]
        if not isinstance(t_key, slice):
            raise TypeError(f"unsupported index {key!r}; index time with an int or a slice")
        start, stop, step = t_key.indices(n)
        frames = range(start, stop, step)
        if step == 1 or not frames:
            block = self._read(start, max(start, stop))
        else:
            lo = min(frames)
            block = self._read(lo, max(frames) + 1)[np.asarray(frames) - lo]
        return block[(slice(None), *rest)]

    def _read(self, start: int, stop: int) -> np.ndarray:
        with self._lock:
            return self.reader.read(start, stop).astype(self.dtype, copy=False)


def _lazy_array(reader: MovieReader, dtype: np.dtype) -> Any:
    """Return a dask array over ``reader``, in blocks of about :data:`BLOCK_BYTES` of frames."""
    import dask.array as da

    t, y, x = reader.shape
    frames = int(max(1, min(t, BLOCK_BYTES // max(1, y * x * np.dtype(dtype).itemsize))))
    source = _FrameSource(reader, dtype)
    return da.from_array(
        source,
        chunks=(frames, y, x),
        asarray=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"calmdown-movie-{uuid.uuid4().hex}",
    )
