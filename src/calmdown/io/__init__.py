"""Reading and writing movies: the only place calmdown touches paths and files.

:func:`open_movie` gives a lazy :class:`MovieReader` for a TIFF, HDF5, zarr or ``.npy`` file
(or wraps an array); :class:`MovieWriter` writes a movie block by block, atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import READ_FORMATS, ArrayReader, MovieReader
from calmdown.io.write import (
    WRITE_FORMATS,
    MovieWriter,
    open_writer,
    output_paths_like,
    same_file,
    save_array,
)

logger = logging.getLogger(__name__)

__all__ = [
    "READ_FORMATS",
    "WRITE_FORMATS",
    "ArrayReader",
    "MovieReader",
    "MovieWriter",
    "open_movie",
    "open_writer",
    "output_paths_like",
    "same_file",
    "save_array",
]


def open_movie(
    source: str | os.PathLike[str] | np.ndarray | MovieReader,
    *,
    key: str | None = None,
) -> MovieReader:
    """Open a movie of shape ``(T, Y, X)`` for lazy, block-wise reading.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray or MovieReader
        A file whose extension picks the reader (``.tif``/``.tiff``/``.btf``,
        ``.h5``/``.hdf5``/``.hdf``, a ``.zarr`` directory, ``.npy``); an array, wrapped in an
        :class:`ArrayReader` (so is any array-like with ``shape``, ``dtype`` and slicing, such
        as a dask or zarr array); or a reader, returned as is.
    key : str or None
        Dataset (HDF5) or array (zarr group) holding the movie. With None, the file must hold
        exactly one 3-D dataset. Not accepted for other sources.

    Returns
    -------
    MovieReader
        Close it when done, or use it as a context manager.

    Raises
    ------
    InputError
        When the file is missing, of an unknown type, unreadable, or holds no numeric
        ``(T, Y, X)`` movie; the message names the file and the fix.

    Examples
    --------
    >>> import numpy as np
    >>> with open_movie(np.zeros((5, 8, 8), dtype=np.uint16)) as movie:
    ...     movie.shape, movie.read(0, 2).dtype
    ((5, 8, 8), dtype('float32'))
    """
    if isinstance(source, np.ndarray):
        _no_key(key, "an in-memory array")
        return ArrayReader(source)
    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, MovieReader):
            _no_key(key, "an open movie")
            return source
        if all(hasattr(source, name) for name in ("shape", "dtype", "__getitem__")):
            _no_key(key, "an in-memory array")
            return ArrayReader(source)  # dask, zarr or h5py arrays: read lazily by slicing
        raise TypeError(
            f"source must be a path, a numpy array or a MovieReader, not {type(source).__name__}"
        )
    path = Path(source).expanduser()
    fmt = READ_FORMATS.get(path.suffix.lower())
    if not path.exists():
        hint = (
            "check the path"
            if path.parent.is_dir()
            else f"check the path (the folder {path.parent} does not exist either)"
        )
        raise InputError(f"no such file; {hint}", path=path)
    if fmt is None:
        what = "is a folder" if path.is_dir() else f"has an unknown extension '{path.suffix}'"
        raise InputError(
            f"{what}; calmdown reads {', '.join(READ_FORMATS)} (a .zarr folder); convert the "
            "movie or rename it with the right extension",
            path=path,
        )
    if fmt != "zarr" and path.is_dir():
        raise InputError(
            "is a folder, not a file; pass a single movie file (a folder of TIFF frames must "
            "first be combined into one multi-page TIFF)",
            path=path,
        )
    if fmt in ("tiff", "npy"):
        _no_key(key, f"a {fmt.upper()} file", path=path)
    if fmt == "tiff":
        from calmdown.io.tiff import TiffReader

        return TiffReader(path)
    if fmt == "hdf5":
        from calmdown.io.hdf5 import HDF5Reader

        return HDF5Reader(path, key=key)
    if fmt == "zarr":
        from calmdown.io.zarr_io import ZarrReader

        return ZarrReader(path, key=key)
    from calmdown.io.npy import NpyReader

    return NpyReader(path)


def _no_key(key: str | None, what: str, *, path: Path | None = None) -> None:
    if key is not None:
        raise InputError(
            f"--key {key!r} applies only to HDF5 and zarr files, not {what}; leave --key out",
            path=path,
        )
