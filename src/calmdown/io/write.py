"""Write movies atomically: to ``<name>.partial``, renamed to ``<name>`` on :meth:`commit`.

The output format follows the extension: ``.tif``/``.tiff``/``.btf`` (tifffile, BigTIFF when
needed), ``.h5``/``.hdf5``/``.hdf`` (h5py), ``.zarr`` (a zarr array at the root of the
directory), ``.npy`` (a memory map) and ``.nwb`` (a copy of the NWB input with the movie added
as a TwoPhotonSeries in processing module ``ophys``; see :mod:`calmdown.io.nwb`). Frames
arrive in blocks, so memory does not grow with the length of the movie.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import ArrayReader, release_mapped_pages

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_DTYPES",
    "WRITE_FORMATS",
    "MovieWriter",
    "cast_block",
    "open_writer",
    "output_dtype",
    "output_paths_like",
    "round_for_output",
    "save_array",
    "write_atomic",
]

#: File extensions that :class:`MovieWriter` writes, by format.
WRITE_FORMATS: dict[str, str] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".zarr": "zarr",
    ".npy": "npy",
    ".nwb": "nwb",
}

#: Choices of the stored type of denoised movies, intervals and samples (``--dtype``).
OUTPUT_DTYPES = ("float32", "input", "uint16", "int16")


def output_dtype(choice: str, input_dtype: np.dtype | str | type) -> np.dtype:
    """Return the stored type for ``choice`` (one of :data:`OUTPUT_DTYPES`).

    ``"input"`` is the raw movie's type when that is an integer type, else float32.

    Raises
    ------
    InputError
        For a choice not in :data:`OUTPUT_DTYPES`.

    Examples
    --------
    >>> output_dtype("input", "uint16"), output_dtype("input", "float64")
    (dtype('uint16'), dtype('float32'))
    """
    if choice not in OUTPUT_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(OUTPUT_DTYPES)}; got {choice!r}")
    if choice == "input":
        kind = np.dtype(input_dtype)
        return kind if kind.kind in "iu" else np.dtype("float32")
    return np.dtype(choice)


def round_for_output(name: str, block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round an output block to whole numbers for an integer ``dtype``.

    The ends of a credible interval round outward (``lower`` down, ``upper`` up), so that the
    stored interval holds the computed one and covers at least as often; every other output
    (the denoised movie, samples) rounds to the nearest whole number. Float types: unchanged.
    """
    if np.dtype(dtype).kind not in "iu" or block.dtype.kind != "f":
        return block
    if name == "lower":
        return np.floor(block)
    if name == "upper":
        return np.ceil(block)
    return np.rint(block)


def cast_block(
    block: np.ndarray, dtype: np.dtype, warn: Callable[[str], None] | None = None
) -> np.ndarray:
    """Convert ``block`` to ``dtype``, rounding and clipping for integer types.

    NaN or infinite values become 0 and values beyond the type's range are clipped, each said
    once through ``warn`` (default: :func:`warnings.warn`).
    """
    target = np.dtype(dtype)
    say = warn or (lambda message: warnings.warn(message, stacklevel=3))
    if block.dtype == target:
        return block
    if target.kind in "iu" and block.dtype.kind in "iuf":
        info = np.iinfo(target)
        if block.dtype.kind == "f":
            block = np.rint(block)
            bad = ~np.isfinite(block)
            if bad.any():
                block = np.where(bad, 0, block)
                say(f"{int(bad.sum())} NaN or infinite values were written as 0")
        low, high = block.min(initial=info.max), block.max(initial=info.min)
        if low < info.min or high > info.max:
            say(
                f"values from {low} to {high} were clipped to the range of {target} "
                f"({info.min} to {info.max}); write float32 to keep them"
            )
            block = np.clip(block, info.min, info.max)
    return block.astype(target)


#: Above this many bytes a TIFF is written as BigTIFF (classic TIFF offsets stop at 4 GiB;
#: the margin leaves room for the tags).
BIGTIFF_BYTES = 2**31 - 2**25


def _json_safe(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Return `metadata` with values JSON can hold (others become strings)."""
    out: dict[str, Any] = {}
    for name, value in (metadata or {}).items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = str(value)
        out[str(name)] = value
    return out


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (by inode when both exist, else by path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _TiffBackend:
    """Frames appended one page each to a single contiguous series (axes TYX)."""

    def __init__(self, partial: Path, shape: tuple[int, int, int], dtype: np.dtype, **kw: Any):
        import tifffile

        nbytes = int(np.prod(shape)) * dtype.itemsize
        bigtiff = nbytes > BIGTIFF_BYTES or partial.name.lower().endswith(".btf.partial")
        self._writer = tifffile.TiffWriter(partial, bigtiff=bigtiff)
        meta = {k: v for k, v in kw["metadata"].items() if k not in ("shape", "axes")}
        self._metadata: dict[str, Any] | None = {"axes": "TYX", **meta}

    def write(self, start: int, block: np.ndarray) -> None:
        for frame in block:
            self._writer.write(
                frame, contiguous=True, photometric="minisblack", metadata=self._metadata
            )
            self._metadata = None

    def close(self) -> None:
        self._writer.close()


class _HDF5Backend:
    """A chunked dataset of (1..16, Y, X) frames; metadata as dataset attributes."""

    def __init__(self, partial: Path, shape: tuple[int, int, int], dtype: np.dtype, **kw: Any):
        import h5py

        t, y, x = shape
        frames = max(1, min(16, t, 2**23 // max(1, y * x * dtype.itemsize)))
        self._file = h5py.File(partial, "w")
        try:
            self._data = self._file.create_dataset(
                kw["key"], shape=shape, dtype=dtype, chunks=(frames, y, x)
            )
            for name, value in kw["metadata"].items():
                self._data.attrs[name] = (
                    value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
                )
        except BaseException:
            self._file.close()
            raise

    def write(self, start: int, block: np.ndarray) -> None:
        self._data[start : start + len(block)] = block

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            self._file.close()


class _ZarrBackend:
    """A zarr array at the root of the directory, chunks of (16..64, Y, X) frames."""

    def __init__(self, partial: Path, shape: tuple[int, int, int], dtype: np.dtype, **kw: Any):
        import zarr

        t, y, x = shape
        frames = max(1, min(t, max(16, min(64, 2**22 // max(1, y * x * dtype.itemsize)))))
        self._array = zarr.open_array(
            store=str(partial), mode="w", shape=shape, chunks=(frames, y, x), dtype=dtype
        )
        self._array.attrs.update(kw["metadata"])

    def write(self, start: int, block: np.ndarray) -> None:
        self._array[start : start + len(block)] = block

    def close(self) -> None:
        """Nothing to flush: every write is stored when it returns."""


class _NpyBackend:
    """A ``.npy`` memory map, its space reserved up front so a full disk fails early."""

    def __init__(self, partial: Path, shape: tuple[int, int, int], dtype: np.dtype, **kw: Any):
        self._array: np.memmap | None = np.lib.format.open_memmap(
            partial, mode="w+", dtype=dtype, shape=shape
        )
        if hasattr(os, "posix_fallocate"):
            fd = os.open(partial, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    self.close()
                    raise
            finally:
                os.close(fd)

    def write(self, start: int, block: np.ndarray) -> None:
        assert self._array is not None
        self._array[start : start + len(block)] = block
        # Written pages stay in the page cache (and reach the file); not in resident memory.
        release_mapped_pages(self._array[start : start + len(block)])

    def close(self) -> None:
        if self._array is not None:
            self._array.flush()
            self._array = None


def _nwb_backend(partial: Path, shape: tuple[int, int, int], dtype: np.dtype, **kw: Any) -> Any:
    """Open a copy of the NWB input with a new TwoPhotonSeries (see :mod:`calmdown.io.nwb`)."""
    from calmdown.io.nwb import NWBSeriesWriter

    sources = [Path(p) for p in kw.get("inputs", ()) if Path(p).suffix.lower() == ".nwb"]
    if not sources:
        raise InputError(
            "NWB output is a copy of an NWB input with the denoised series added, but the "
            "input is not an NWB file; write .h5, .tif or .zarr instead",
            path=partial.with_suffix(""),
        )
    key = kw.get("key") or None
    meta = kw.get("metadata") or {}
    return NWBSeriesWriter(
        partial,
        shape,
        dtype,
        source=sources[0],
        source_key=None if key == "data" else key,
        name=meta.get("nwb_series_name") or None,
        description=str(meta.get("description") or "denoised by calmdown"),
    )


_BACKENDS = {
    "tiff": _TiffBackend,
    "hdf5": _HDF5Backend,
    "zarr": _ZarrBackend,
    "npy": _NpyBackend,
    "nwb": _nwb_backend,
}


class MovieWriter:
    """Write a movie of shape ``(T, Y, X)`` block by block, atomically.

    Data go to ``<name>.partial`` in the output directory; :meth:`commit` renames it to the
    output path with :func:`os.replace`, so the output is either complete or absent. Used as a
    context manager, it commits on a clean exit and aborts (deleting the partial file) on an
    exception, including :class:`KeyboardInterrupt` (Ctrl-C, and SIGTERM under the CLI), also
    when it arrives during the commit itself. Only a hard kill (SIGKILL, power loss) can leave
    ``<name>.partial`` behind; the next writer of the same output deletes it.

    Parameters
    ----------
    path : str or os.PathLike
        The output file; the extension picks the format (see :data:`WRITE_FORMATS`).
    shape : tuple of int
        ``(T, Y, X)`` of the whole movie.
    dtype : str or numpy.dtype
        Data type stored. Floating data written to an integer type are rounded and clipped to
        its range (with a warning when values are clipped).
    key : str
        Dataset name in an HDF5 file; for ``.nwb``, the source series in the NWB input
        (``"data"`` or empty: its only one). Ignored by the other formats.
    inputs : sequence of path-like
        Files the movie was computed from; writing over any of them is refused.
    metadata : dict or None
        Stored with the data (TIFF description, HDF5/zarr attributes; not in ``.npy``), e.g.
        ``{"frame_rate": 30.0}``. Values JSON cannot hold are stored as text.
    overwrite : bool
        Whether an existing output may be replaced (only at :meth:`commit`).

    Raises
    ------
    InputError
        When the output would overwrite an input, the extension is unknown, the output exists
        and `overwrite` is False, or the directory is missing or not writable.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "movie.tif")
    >>> with MovieWriter(out, (4, 3, 2), dtype="uint16") as writer:
    ...     writer.write(0, np.ones((2, 3, 2)))
    ...     writer.write(2, np.zeros((2, 3, 2)))
    >>> os.path.exists(out)
    True
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, int, int],
        *,
        dtype: str | np.dtype | type = "float32",
        key: str = "data",
        inputs: Sequence[str | os.PathLike[str]] = (),
        metadata: dict[str, Any] | None = None,
        overwrite: bool = True,
    ) -> None:
        path = Path(path).expanduser()
        self.path = path
        shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (T, Y, X) with every length >= 1, got {shape}")
        self.shape: tuple[int, int, int] = shape
        self.format = WRITE_FORMATS.get(path.suffix.lower())
        if self.format is None:
            raise InputError(
                f"cannot write files of type '{path.suffix or '(no extension)'}'; use one of "
                f"{', '.join(WRITE_FORMATS)}",
                path=path,
            )
        try:
            self.dtype = np.dtype(dtype)
        except TypeError as err:
            raise InputError(
                f"unknown output data type {dtype!r}; use e.g. float32 or uint16", path=path
            ) from err
        if self.dtype.kind not in "iuf":
            raise InputError(
                f"cannot write data type {self.dtype}; choose an integer or floating type such "
                "as float32 or uint16",
                path=path,
            )
        for source in inputs:
            if same_file(path, Path(source).expanduser()):
                raise InputError(
                    f"would overwrite the input {os.fspath(source)}; choose another output path",
                    path=path,
                )
        parent = path.parent
        if not parent.is_dir():
            raise InputError(
                f"cannot write to {parent}: the directory does not exist; create it or choose "
                "a writable location",
                path=path,
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(
                f"cannot write to {parent}: permission denied; choose a writable location",
                path=path,
            )
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise InputError(
                    "already exists; pass --overwrite (overwrite=True) or choose another "
                    "output path",
                    path=path,
                )
            if path.is_dir() and self.format != "zarr":
                raise InputError("is a directory; choose a file name for the output", path=path)
        self.partial = path.with_name(path.name + ".partial")
        _remove(self.partial)  # left over from a run that crashed
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._next = 0
        self._warned = False
        self._state = "open"
        try:
            self._backend: Any = _BACKENDS[self.format](
                self.partial,
                self.shape,
                self.dtype,
                key=key,
                metadata=_json_safe(metadata),
                inputs=list(inputs),
            )
        except InputError:
            self._state = "aborted"
            _remove(self.partial)
            raise
        except OSError as err:
            self._state = "aborted"
            _remove(self.partial)
            raise InputError(
                f"cannot write to {self.partial}: {err}; choose a writable location", path=path
            ) from err
        except ValueError as err:  # h5py rejects the dataset name
            self._state = "aborted"
            _remove(self.partial)
            raise InputError(
                f"cannot create dataset {key!r} ({err}); choose another --key", path=path
            ) from err
        logger.debug("writing %s %s to %s", self.shape, self.dtype, self.partial)

    def __repr__(self) -> str:
        where = str(self.path)
        return f"<MovieWriter {where!r} shape={self.shape} dtype={self.dtype} {self._state}>"

    def __enter__(self) -> MovieWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:  # e.g. Ctrl-C while flushing: leave no partial file
                self.abort()
                raise
        else:
            self.abort()

    def _cast(self, block: np.ndarray) -> np.ndarray:
        """Convert `block` to the output dtype, rounding and clipping for integer outputs."""
        return cast_block(block, self.dtype, self._warn)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.path}: {message}", stacklevel=4)

    def write(self, start: int, block: np.ndarray) -> None:
        """Store frames ``start .. start + len(block)``.

        Parameters
        ----------
        start : int
            Index of the first frame of `block`. TIFF output needs blocks in order, each
            starting where the last ended; the other formats take them in any order.
        block : numpy.ndarray
            Shape ``(n, Y, X)`` (or ``(Y, X)`` for one frame).

        Raises
        ------
        ValueError
            When the block does not fit the movie, is out of order for TIFF, or the writer
            is closed.
        InputError
            When the disk fails (e.g. it is full); the partial file is deleted.
        """
        if self._state != "open":
            raise ValueError(f"{self!r} is closed; open a new writer")
        block = np.asarray(block)
        if block.ndim == 2:
            block = block[np.newaxis]
        t, y, x = self.shape
        start = int(start)
        if block.ndim != 3 or block.shape[1:] != (y, x):
            raise ValueError(f"block of shape {block.shape} does not fit frames of shape {(y, x)}")
        if not 0 <= start <= start + len(block) <= t:
            raise ValueError(
                f"frames {start}:{start + len(block)} are out of range for a movie of {t} frames"
            )
        if self.format == "tiff" and start != self._next:
            raise ValueError(
                f"TIFF output is written in order: expected a block starting at frame "
                f"{self._next}, got {start}"
            )
        if block.dtype.kind not in "iuf":
            raise ValueError(f"cannot store a block of dtype {block.dtype}; pass numbers")
        block = self._cast(block)
        try:
            self._backend.write(start, block)
        except OSError as err:
            self.abort()
            raise InputError(
                f"writing failed ({err}); free some space or choose another location",
                path=self.path,
            ) from err
        self._written[start : start + len(block)] = True
        self._next = max(self._next, start + len(block))

    def commit(self) -> Path:
        """Finish the file and move it to its final name.

        Returns
        -------
        Path
            The output path.

        Raises
        ------
        ValueError
            When not every frame was written (the partial file is deleted) or after
            :meth:`abort`.
        InputError
            When flushing or renaming fails.
        """
        if self._state == "committed":
            return self.path
        if self._state != "open":
            raise ValueError(f"{self!r} was aborted; nothing to commit")
        missing = int((~self._written).sum())
        if missing:
            self.abort()
            raise ValueError(
                f"{self.path}: {missing} of {self.shape[0]} frames were never written; "
                "write every frame before commit()"
            )
        try:
            self._backend.close()
            self._replace()
        except OSError as err:
            self.abort()
            raise InputError(
                f"cannot finish writing ({err}); free some space or choose another location",
                path=self.path,
            ) from err
        self._state = "committed"
        logger.info("wrote %s", self.path)
        return self.path

    def _replace(self) -> None:
        if self.format == "zarr" and (self.path.exists() or self.path.is_symlink()):
            # A directory cannot replace a directory in one step: move the old one aside first.
            old = self.path.with_name(self.path.name + f".old-{os.getpid()}")
            _remove(old)
            os.replace(self.path, old)
            try:
                os.replace(self.partial, self.path)
            except OSError:
                os.replace(old, self.path)
                raise
            _remove(old)
        else:
            os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Close and delete the partial output; the final path is left as it was."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._backend.close()
        except (OSError, RuntimeError, ValueError) as err:  # the partial is deleted anyway
            logger.debug("%s: error while aborting: %s", self.partial, err)
        _remove(self.partial)
        logger.debug("aborted %s", self.path)


def open_writer(
    path: str | os.PathLike[str], shape: tuple[int, int, int], **kwargs: Any
) -> MovieWriter:
    """Open a :class:`MovieWriter` (the same arguments).

    Parameters
    ----------
    path : str or os.PathLike
        The output file.
    shape : tuple of int
        ``(T, Y, X)``.
    **kwargs
        ``dtype``, ``key``, ``inputs``, ``metadata``, ``overwrite``.

    Returns
    -------
    MovieWriter
        Ready for :meth:`MovieWriter.write`.
    """
    return MovieWriter(path, shape, **kwargs)


def save_array(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    dtype: str | np.dtype | type | None = None,
    **kwargs: Any,
) -> Path:
    """Write a whole movie atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The output file; the extension picks the format.
    array : numpy.ndarray
        Shape ``(T, Y, X)`` (extra axes of length 1 are dropped).
    dtype : str or numpy.dtype or None
        Data type stored; None keeps the array's.
    **kwargs
        ``key``, ``inputs``, ``metadata``, ``overwrite`` of :class:`MovieWriter`.

    Returns
    -------
    Path
        The output path.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> out = save_array(os.path.join(tempfile.mkdtemp(), "m.npy"), np.zeros((3, 2, 2)))
    >>> out.name
    'm.npy'
    """
    reader = ArrayReader(array)
    t, y, x = reader.shape
    step = max(1, 2**26 // max(1, y * x * reader.dtype.itemsize))
    out_dtype = reader.dtype if dtype is None else dtype
    with MovieWriter(path, reader.shape, dtype=out_dtype, **kwargs) as writer:
        for start in range(0, t, step):
            writer.write(start, reader._fetch(start, min(t, start + step)))
    return writer.path


def output_paths_like(path: str | os.PathLike[str], suffixes: Sequence[str]) -> list[Path]:
    """Name outputs after `path`, inserting each suffix before the extension.

    Parameters
    ----------
    path : str or os.PathLike
        The main output, e.g. ``out.tif``.
    suffixes : sequence of str
        Labels such as ``("lower", "upper")``.

    Returns
    -------
    list of Path
        E.g. ``out.lower.tif`` and ``out.upper.tif``.

    Examples
    --------
    >>> [p.name for p in output_paths_like("out.tif", ["lower", "upper"])]
    ['out.lower.tif', 'out.upper.tif']
    """
    path = Path(path)
    ext = path.suffix
    stem = path.name[: len(path.name) - len(ext)] if ext else path.name
    out = []
    for suffix in suffixes:
        suffix = str(suffix).strip(".")
        if not suffix or "/" in suffix or os.sep in suffix:
            raise ValueError(f"suffix {suffix!r} must be a non-empty name without '/'")
        out.append(path.with_name(f"{stem}.{suffix}{ext}"))
    return out


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object], what: str) -> Path:
    """Write a small file under ``<path>.partial`` with ``write(partial)``, then rename it.

    Nothing appears under ``path`` unless the write completed; on failure the partial file is
    removed and an :class:`InputError` names the file and the fix.

    Parameters
    ----------
    path : str or os.PathLike
        Final name.
    write : callable
        Writes the whole file to the path it is given.
    what : str
        What the file is, for the message (``"model"``, ``"report"``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise InputError(
            f"cannot write the {what}: {err}; choose a writable location", path=path
        ) from err
    return path
