"""Read a TwoPhotonSeries from an NWB file, and write a copy of the file with a denoised one.

Needs the optional dependency pynwb (``pip install 'calmdown[nwb]'``).

Layout. The NWB schema stores an imaging series as ``(frames, x, y)`` or
``(frames, x, y, z)``: the second axis runs along x (columns). :class:`NWBReader` therefore
returns frames transposed to calmdown's ``(T, Y, X)``, and the writer transposes them back,
so a denoised series has the layout of its source. (Some tools store ``(frames, y, x)``
instead; the movie then appears transposed, which changes nothing for denoising, and the
output keeps that layout too.)

Output. :func:`write_nwb_copy` (and :class:`calmdown.io.MovieWriter` for a ``.nwb`` output,
which the command line uses) copies the source NWB file and adds the denoised movie as a
TwoPhotonSeries in the processing module ``ophys`` (created if missing), since NWB keeps
derived data in processing modules and raw data in ``acquisition``. It shares the source's
imaging plane, timing (``rate`` and ``starting_time``, or a link to its timestamps), unit,
conversion and offset, and is named ``<source>_denoised`` unless a name is given. A plane of a
volumetric source series ``(frames, x, y, z)`` is written as a 3-D series ``(frames, x, y)``.
The copy is written to ``<name>.partial`` and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import ReaderBase, check_dtype

logger = logging.getLogger(__name__)

__all__ = ["NWBReader", "NWBSeriesWriter", "list_imaging_series", "write_nwb_copy"]

#: Name of the processing module that denoised series are written to.
MODULE = "ophys"


def _pynwb(path: Path | None = None) -> Any:
    try:
        import pynwb
    except ImportError as err:
        raise InputError(
            f"reading and writing NWB files needs pynwb ({err}); install it with "
            "pip install 'calmdown[nwb]', or convert the movie to TIFF or HDF5",
            path=path,
        ) from err
    return pynwb


def _open(path: Path, mode: str) -> tuple[Any, Any]:
    """Open an NWB file with pynwb; return ``(io, nwbfile)``."""
    pynwb = _pynwb(path)
    try:
        io = pynwb.NWBHDF5IO(str(path), mode, load_namespaces=True)
    except Exception as err:  # h5py, hdmf and pynwb raise many types for a bad file
        raise InputError(
            f"cannot open as an NWB file ({type(err).__name__}: {err}); the file may be "
            "truncated, corrupt or not NWB; check it with nwbinspector",
            path=path,
        ) from err
    try:
        nwbfile = io.read()
    except Exception as err:  # schema or HDF5 errors while building the containers
        io.close()
        raise InputError(
            f"cannot read the NWB file ({type(err).__name__}: {err}); the file may be "
            "corrupt or written with an extension that is not installed; check it with "
            "nwbinspector",
            path=path,
        ) from err
    return io, nwbfile


def list_imaging_series(nwbfile: Any) -> dict[str, Any]:
    """All imaging series (TwoPhotonSeries, OnePhotonSeries) of an open NWB file, by key.

    Parameters
    ----------
    nwbfile : pynwb.NWBFile
        The file read.

    Returns
    -------
    dict
        ``name`` for series in ``acquisition``, ``"module/name"`` for series in a processing
        module, in file order.
    """
    from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries

    kinds = (TwoPhotonSeries, OnePhotonSeries)
    found: dict[str, Any] = {}
    for name, obj in nwbfile.acquisition.items():
        if isinstance(obj, kinds):
            found[name] = obj
    for module_name, module in nwbfile.processing.items():
        for name, obj in module.data_interfaces.items():
            if isinstance(obj, kinds):
                found[f"{module_name}/{name}"] = obj
    return found


def _find_series(path: Path, nwbfile: Any, key: str | None) -> tuple[str, Any]:
    found = list_imaging_series(nwbfile)
    names = ", ".join(f"'{name}'" for name in found) or "none"
    if key is not None:
        wanted = key.strip("/")
        for prefix in ("acquisition/", "processing/"):
            if wanted.startswith(prefix):
                wanted = wanted[len(prefix) :]
        if wanted in found:
            return wanted, found[wanted]
        raise InputError(
            f"has no TwoPhotonSeries '{key}'; imaging series in the file: {names}; pass one "
            "of them with --key",
            path=path,
        )
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        raise InputError(
            "holds no TwoPhotonSeries or OnePhotonSeries; an NWB movie must be stored as one "
            "(in acquisition or a processing module)",
            path=path,
        )
    raise InputError(
        f"holds several imaging series: {names}; choose one with --key (key= in Python), "
        f"e.g. --key {next(iter(found))}",
        path=path,
    )


class NWBReader(ReaderBase):
    """A TwoPhotonSeries of an NWB file, read lazily as ``(T, Y, X)``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.nwb`` file (HDF5).
    key : str or None
        The series: its name in ``acquisition``, or ``module/name`` in a processing module.
        With None the file must hold exactly one imaging series.
    plane : int or None
        For a volumetric series ``(frames, x, y, z)``: the plane, counted from 1.

    Attributes
    ----------
    key : str
        The series read.
    metadata : dict
        ``frame_rate`` (Hz, from ``rate`` or the imaging plane), ``key``, ``unit``,
        ``conversion``, ``offset``, ``description``.

    Raises
    ------
    InputError
        When pynwb is missing, the file is not NWB, the series is missing or ambiguous
        (the message lists the series), stored in external files, or not a movie.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, key: str | None = None, plane: int | None = None
    ) -> None:
        path = Path(path)
        self.path = path
        self._args: dict[str, Any] = {"path": path, "key": key, "plane": plane}
        self._lock = threading.Lock()
        self._io, nwbfile = _open(path, "r")
        try:
            self._setup(path, nwbfile, key, plane)
        except BaseException:
            self._io.close()
            raise

    def _setup(self, path: Path, nwbfile: Any, key: str | None, plane: int | None) -> None:
        self.key, series = _find_series(path, nwbfile, key)
        external = getattr(series, "external_file", None)
        data = series.data
        if external is not None and len(external) and (data is None or 0 in np.shape(data)):
            files = ", ".join(str(f) for f in list(external)[:5])
            raise InputError(
                f"series '{self.key}' keeps its frames in external files ({files}); open those "
                "files directly",
                path=path,
            )
        shape = tuple(int(n) for n in data.shape)
        self.dtype = np.dtype(data.dtype)
        check_dtype(self.dtype, path=path, what=f"series '{self.key}'")
        if len(shape) == 4:
            n_planes = shape[3]
            if plane is None:
                if n_planes != 1:
                    raise InputError(
                        f"series '{self.key}' is a volume of {n_planes} planes, shape {shape} "
                        f"(frames, x, y, z); choose one with --plane 1 to {n_planes}",
                        path=path,
                    )
                plane = 1
            if isinstance(plane, bool) or int(plane) != plane or not 1 <= plane <= n_planes:
                raise InputError(
                    f"series '{self.key}' has no plane {plane!r}; pass --plane 1 to {n_planes} "
                    "(counted from 1)",
                    path=path,
                )
            self._plane: int | None = int(plane) - 1
        elif len(shape) == 3:
            if plane is not None:
                raise InputError(
                    f"series '{self.key}' has a single plane, shape {shape}; leave --plane out",
                    path=path,
                )
            self._plane = None
        else:
            raise InputError(
                f"series '{self.key}' has shape {shape}, not (frames, x, y); store the movie "
                "as frames of 2-D images",
                path=path,
            )
        t, nx, ny = shape[:3]
        self.shape = (t, ny, nx)
        self._data = data
        self.metadata = {"key": self.key, "axes": "TYX"}
        rate = getattr(series, "rate", None)
        if rate is None:
            rate = getattr(getattr(series, "imaging_plane", None), "imaging_rate", None)
        if rate is not None and float(rate) > 0:
            self.metadata["frame_rate"] = float(rate)
        for name in ("unit", "conversion", "offset", "description"):
            value = getattr(series, name, None)
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, (str, int, float)):
                self.metadata[name] = value
        if self._plane is not None:
            self.metadata["plane"] = self._plane + 1
            self.metadata["planes"] = shape[3]

    def _repr_fields(self) -> str:
        return f"key={self.key!r}"

    def _reopen_kwargs(self) -> dict[str, Any]:
        return self._args

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            with self._lock:
                if self._plane is None:
                    block = np.asarray(self._data[start:stop])
                else:
                    block = np.asarray(self._data[start:stop, :, :, self._plane])
        except Exception as err:  # h5py errors for truncated files or missing filters
            raise InputError(
                f"cannot read frames {start}:{stop} of '{self.key}' ({type(err).__name__}: "
                f"{err}); the file may be truncated or corrupt",
                path=self.path,
            ) from err
        return self._to_float32(block.transpose(0, 2, 1), start)

    def close(self) -> None:
        """Close the file; reading afterwards raises ValueError."""
        super().close()
        self._data = None
        self._io.close()


class NWBSeriesWriter:
    """Fill a new TwoPhotonSeries in a copy of an NWB file, block by block.

    The back end of :class:`calmdown.io.MovieWriter` for ``.nwb`` outputs; use that (or
    :func:`write_nwb_copy`) rather than this class.

    Parameters
    ----------
    partial : Path
        Where the copy is written (renamed by the caller when complete).
    shape : tuple of int
        ``(T, Y, X)`` of the movie written; must match the source series (one of its planes,
        for a volumetric series).
    dtype : numpy.dtype
        Data type stored.
    source : Path
        The NWB file copied.
    source_key : str or None
        The source series (see :class:`NWBReader`); None when the file holds only one.
    name : str or None
        Name of the new series in processing module ``ophys``; ``<source>_denoised`` if None.
    description : str
        Stored as the series' description.

    Raises
    ------
    InputError
        When the source is not an NWB file with that series, its frames do not match `shape`,
        or the new name is taken.
    """

    def __init__(
        self,
        partial: Path,
        shape: tuple[int, int, int],
        dtype: np.dtype,
        *,
        source: Path,
        source_key: str | None = None,
        name: str | None = None,
        description: str = "denoised by calmdown",
    ) -> None:
        pynwb = _pynwb(source)
        from hdmf.backends.hdf5.h5_utils import H5DataIO

        shutil.copyfile(source, partial)
        self._file: Any = None
        io, nwbfile = _open(partial, "a")
        try:
            key, series = _find_series(source, nwbfile, source_key)
            name = name or f"{key.rsplit('/', 1)[-1]}_denoised"
            module = nwbfile.processing.get(MODULE)
            if module is None:
                module = nwbfile.create_processing_module(
                    name=MODULE, description="optical physiology processed data"
                )
            if name in module.data_interfaces:
                raise InputError(
                    f"already holds a series '{MODULE}/{name}'; choose another name",
                    path=source,
                )
            src_shape = tuple(int(n) for n in series.data.shape)
            t, y, x = shape
            if len(src_shape) not in (3, 4) or src_shape[:3] != (t, x, y):
                raise InputError(
                    f"series '{key}' has shape {src_shape} (frames, x, y[, z]), which does not "
                    f"match the movie written, {shape} (T, Y, X); write to .h5 or .tif instead",
                    path=source,
                )
            chunk_frames = max(1, min(t, 2**22 // max(1, x * y * dtype.itemsize)))
            timing: dict[str, Any] = {}
            if getattr(series, "rate", None) is not None:
                timing = {"rate": float(series.rate)}
                if series.starting_time is not None:
                    timing["starting_time"] = float(series.starting_time)
            elif series.timestamps is not None:
                timing = {"timestamps": series}  # links to the source's timestamps
            else:
                timing = {"rate": 1.0}
            new = pynwb.ophys.TwoPhotonSeries(
                name=name,
                data=H5DataIO(shape=(t, x, y), dtype=dtype, chunks=(chunk_frames, x, y)),
                imaging_plane=series.imaging_plane,
                unit=series.unit,
                conversion=series.conversion,
                offset=getattr(series, "offset", 0.0),
                description=description,
                comments=f"calmdown output computed from '{key}'",
                **timing,
            )
            module.add(new)
            io.write(nwbfile)
        except InputError:
            io.close()
            raise
        except Exception as err:  # pynwb validation and HDF5 errors while adding the series
            io.close()
            raise InputError(
                f"cannot add a series to a copy of the NWB file ({type(err).__name__}: {err}); "
                "write the output as .h5 or .tif instead",
                path=source,
            ) from err
        io.close()
        import h5py

        self._file = h5py.File(partial, "r+")
        self._data = self._file[f"processing/{MODULE}/{name}/data"]
        self.name = f"{MODULE}/{name}"

    def write(self, start: int, block: np.ndarray) -> None:
        """Store frames ``start .. start + len(block)`` given as ``(n, Y, X)``."""
        self._data[start : start + len(block)] = np.asarray(block).transpose(0, 2, 1)

    def close(self) -> None:
        """Flush and close the copy."""
        if self._file is not None and self._file.id.valid:
            self._file.flush()
            self._file.close()


def write_nwb_copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    movie: Any,
    *,
    name: str | None = None,
    source_key: str | None = None,
    description: str = "denoised by calmdown",
    overwrite: bool = True,
) -> Path:
    """Copy an NWB file and add `movie` as a TwoPhotonSeries in processing module ``ophys``.

    Parameters
    ----------
    src : str or os.PathLike
        The NWB file holding the raw series.
    dst : str or os.PathLike
        The copy to write (``.nwb``); never `src`.
    movie : numpy.ndarray or MovieReader
        The denoised movie, ``(T, Y, X)`` like the source series as :class:`NWBReader`
        returns it; read and written block by block.
    name : str or None
        Name of the new series; ``<source>_denoised`` if None.
    source_key : str or None
        The source series, when the file holds several.
    description : str
        The series' description.
    overwrite : bool
        Whether an existing `dst` may be replaced.

    Returns
    -------
    Path
        `dst`.

    Raises
    ------
    InputError
        When pynwb is missing, `src` is not NWB or lacks the series, the shapes differ, or
        `dst` cannot be written.

    Examples
    --------
    >>> from calmdown.io import open_movie
    >>> with open_movie("rec.nwb") as raw:  # doctest: +SKIP
    ...     write_nwb_copy("rec.nwb", "rec_denoised.nwb", denoised)
    """
    from calmdown.io.write import MovieWriter

    src = Path(src)
    with MovieWriter(
        dst,
        movie.shape,
        dtype="float32",
        key=source_key or "",
        inputs=[src],
        metadata={"nwb_series_name": name, "description": description},
        overwrite=overwrite,
    ) as writer:
        t = movie.shape[0]
        step = max(1, 2**24 // max(1, int(np.prod(movie.shape[1:])) * 4))
        for start in range(0, t, step):
            stop = min(t, start + step)
            block = movie.read(start, stop) if hasattr(movie, "read") else movie[start:stop]
            writer.write(start, block)
    return writer.path
