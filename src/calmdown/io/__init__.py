"""Reading and writing movies: the only place calmdown touches paths and files.

:func:`open_movie` gives a lazy :class:`MovieReader` for a TIFF, HDF5, zarr or ``.npy`` file,
or for a recording split over numbered files (or wraps an array); :func:`count_planes` says how
many planes a volumetric recording holds; :class:`MovieWriter` writes a movie block by block,
atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import READ_FORMATS, ArrayReader, MovieReader
from calmdown.io.concat import ConcatReader, has_glob, multi_file_parts
from calmdown.io.padding import Crop, CroppedReader, Region, measured_region, parse_crop
from calmdown.io.planes import count_planes
from calmdown.io.sbx import is_sbx_settings
from calmdown.io.write import (
    OUTPUT_DTYPES,
    WRITE_FORMATS,
    MovieWriter,
    cast_block,
    open_writer,
    output_dtype,
    output_paths_like,
    round_for_output,
    same_file,
    save_array,
    write_atomic,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_DTYPES",
    "READ_FORMATS",
    "WRITE_FORMATS",
    "ArrayReader",
    "ConcatReader",
    "MovieReader",
    "MovieWriter",
    "cast_block",
    "count_planes",
    "open_movie",
    "open_writer",
    "output_dtype",
    "output_paths_like",
    "round_for_output",
    "same_file",
    "save_array",
    "write_atomic",
]


def open_movie(
    source: str | os.PathLike[str] | np.ndarray | MovieReader,
    *,
    key: str | None = None,
    channel: int | None = None,
    plane: int | None = None,
    roi: int | None = None,
    crop: Crop | Region | str | None = None,
) -> MovieReader:
    """Open a movie of shape ``(T, Y, X)`` for lazy, block-wise reading.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray or MovieReader
        A file whose extension picks the reader (``.tif``/``.tiff``/``.btf``, ScanImage TIFFs
        included; ``.h5``/``.hdf5``/``.hdf``; a ``.zarr`` directory; ``.npy``; ``.nwb``; a
        Scanbox ``.sbx`` with its ``.mat`` beside it); a
        suite2p plane folder, its ``ops.npy`` or its ``data.bin``; a recording split over
        several files, read concatenated in time by a :class:`ConcatReader`: a folder of
        numbered TIFF files (ScanImage's ``name_00001.tif``, ``name_00002.tif``, ...) or a
        glob pattern such as ``"rec/name_*.tif"`` (see :mod:`calmdown.io.concat`); an array,
        wrapped in an :class:`ArrayReader` (so is any array-like with ``shape``, ``dtype``
        and slicing, such as a dask or zarr array); or a reader, returned as is.
    key : str or None
        Dataset (HDF5), array (zarr group) or TwoPhotonSeries (NWB) holding the movie. With
        None, the file must hold exactly one. Not accepted for other sources.
    channel : int or None
        The channel to read, for files with several: its ScanImage number (a value of
        ``SI.hChannels.channelSave``) for ScanImage TIFFs; counted from 1 along the ``C`` axis
        of other TIFFs; 1 or 2 (``data_chan2.bin``) for suite2p; counted from 1 as stored for
        Scanbox. Not accepted for formats without channels.
    plane : int or None
        The plane to read, counted from 1: a ScanImage slice, the ``Z`` axis of a TIFF, the
        depth axis of a 4-D NWB TwoPhotonSeries, a plane of a Scanbox volume scan. Not
        accepted for formats without planes.
    roi : int or None
        The imaging region (ROI) to read from a ScanImage multi-ROI recording, counted from 1
        (see :mod:`calmdown.io.scanimage`); may be left out when it has one ROI. Not accepted
        for other files.
    crop : ((int, int), (int, int)), ((int, int), (int, int), (int, int)), str or None
        Read only the rows ``y0:y1`` and columns ``x0:x1`` of every frame, after the frames
        ``t0:t1`` if given (``-1`` as an end is the edge; a string as
        :func:`calmdown.io.padding.parse_crop` reads), e.g. to cut away the padding that motion
        correction leaves at the edges (NaN there is then allowed). ``"auto"`` reads the movie
        once to find the frames, rows and columns measured throughout: padding and blank frames
        at the start and end cut (:func:`calmdown.io.padding.measured_region`); a movie
        without either is read whole.

    Returns
    -------
    MovieReader
        Close it when done, or use it as a context manager. Its ``metadata`` dict holds what
        the file says about the recording (e.g. ``frame_rate`` in Hz, ``zoom``).

    Raises
    ------
    InputError
        When the file is missing, of an unknown type, unreadable, or holds no numeric
        ``(T, Y, X)`` movie, or the channel, plane or ROI is missing, ambiguous or out of
        range; the message names the file and the fix.

    Examples
    --------
    >>> import numpy as np
    >>> with open_movie(np.zeros((5, 8, 8), dtype=np.uint16)) as movie:
    ...     movie.shape, movie.read(0, 2).dtype
    ((5, 8, 8), dtype('float32'))
    """
    if crop is not None:
        reader = open_movie(source, key=key, channel=channel, plane=plane, roi=roi)
        try:
            if crop == "auto":
                crop = measured_region(reader)
                n, h, w = reader.shape
                if crop == ((0, n), (0, h), (0, w)):
                    return reader
                logger.info(
                    "%s: reading frames %d:%d, rows %d:%d, columns %d:%d (measured throughout)",
                    reader.path or "the movie",
                    *crop[0],
                    *crop[1],
                    *crop[2],
                )
            elif isinstance(crop, str):
                crop = parse_crop(crop)
            return CroppedReader(reader, crop)
        except BaseException:
            if reader is not source:
                reader.close()
            raise
    if isinstance(source, np.ndarray):
        _no_key(key, "an in-memory array")
        _no_pick(channel, plane, "an in-memory array")
        _no_roi(roi, "an in-memory array")
        return ArrayReader(source)
    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, MovieReader):
            _no_key(key, "an open movie")
            _no_pick(channel, plane, "an open movie (pick them when opening it)")
            _no_roi(roi, "an open movie (pick the ROI when opening it)")
            return source
        if all(hasattr(source, name) for name in ("shape", "dtype", "__getitem__")):
            _no_key(key, "an in-memory array")
            _no_pick(channel, plane, "an in-memory array")
            _no_roi(roi, "an in-memory array")
            return ArrayReader(source)  # dask, zarr or h5py arrays: read lazily by slicing
        raise TypeError(
            f"source must be a path, a numpy array or a MovieReader, not {type(source).__name__}"
        )
    path = Path(source).expanduser()
    fmt = READ_FORMATS.get(path.suffix.lower())
    if is_sbx_settings(path):
        fmt = "sbx"  # a Scanbox recording named by its settings file
    if has_glob(source) and not path.exists():
        return ConcatReader(
            multi_file_parts(source) or [],
            key=key,
            channel=channel,
            plane=plane,
            roi=roi,
            source=path,
        )
    if not path.exists():
        hint = (
            "check the path"
            if path.parent.is_dir()
            else f"check the path (the folder {path.parent} does not exist either)"
        )
        raise InputError(f"no such file; {hint}", path=path)
    if fmt != "zarr" and (path.is_dir() or path.name.lower() == "ops.npy"):
        from calmdown.io.suite2p import is_suite2p

        if is_suite2p(path):
            fmt = "suite2p"
    if fmt is None and path.is_dir():
        parts = multi_file_parts(path)
        if parts:
            return ConcatReader(parts, key=key, channel=channel, plane=plane, roi=roi, source=path)
    if fmt is None and path.suffix.lower() == ".pt":
        raise InputError(
            "is a calmdown model (or another PyTorch file), not a movie; pass the raw movie "
            "here and the model with --model (calmdown traces, report), or use "
            "`calmdown apply MODEL MOVIE -o OUT`",
            path=path,
        )
    if fmt is None:
        what = "is a folder" if path.is_dir() else f"has an unknown extension '{path.suffix}'"
        raise InputError(
            f"{what}; calmdown reads {', '.join(READ_FORMATS)} (a .zarr folder) and suite2p "
            "plane folders; convert the movie or rename it with the right extension",
            path=path,
        )
    if fmt not in ("zarr", "suite2p") and path.is_dir():
        raise InputError(
            "is a folder, not a file; pass a single movie file (a folder of TIFF frames must "
            "first be combined into one multi-page TIFF)",
            path=path,
        )
    if fmt != "tiff":
        names = {
            "hdf5": "an HDF5 file",
            "zarr": "a Zarr store",
            "nwb": "an NWB file",
            "npy": "a .npy file",
            "suite2p": "a suite2p plane",
            "sbx": "a Scanbox recording",
        }
        _no_roi(roi, names.get(fmt, f"a {fmt} file"), path=path)
    if fmt in ("tiff", "npy", "suite2p", "sbx"):
        _no_key(
            key,
            {"suite2p": "suite2p", "sbx": "a Scanbox recording"}.get(fmt, f"a {fmt.upper()} file"),
            path=path,
        )
    if fmt in ("hdf5", "zarr", "npy"):
        _no_pick(channel, plane, f"a {fmt.upper()} file (save one channel and plane)", path=path)
    if fmt == "tiff":
        from calmdown.io.scanimage import ScanImageReader, is_scanimage

        if is_scanimage(path):
            return ScanImageReader(path, channel=channel, plane=plane, roi=roi)
        _no_roi(roi, "this TIFF file (it was not written by ScanImage)", path=path)
        from calmdown.io.tiff import TiffReader

        return TiffReader(path, channel=channel, plane=plane)
    if fmt == "hdf5":
        from calmdown.io.hdf5 import HDF5Reader

        return HDF5Reader(path, key=key)
    if fmt == "zarr":
        from calmdown.io.zarr_io import ZarrReader

        return ZarrReader(path, key=key)
    if fmt == "suite2p":
        _no_pick(None, plane, "a suite2p plane (pass the folder of the plane, planeN)", path=path)
        from calmdown.io.suite2p import Suite2pReader

        return Suite2pReader(path, channel=channel)
    if fmt == "nwb":
        _no_pick(channel, None, "an NWB TwoPhotonSeries (pick the series with --key)", path=path)
        from calmdown.io.nwb import NWBReader

        return NWBReader(path, key=key, plane=plane)
    if fmt == "sbx":
        from calmdown.io.sbx import SbxReader

        return SbxReader(path, channel=channel, plane=plane)
    from calmdown.io.npy import NpyReader

    return NpyReader(path)


def _no_key(key: str | None, what: str, *, path: Path | None = None) -> None:
    if key is not None:
        raise InputError(
            f"--key {key!r} applies only to HDF5, zarr and NWB files, not {what}; leave --key out",
            path=path,
        )


def _no_pick(
    channel: int | None, plane: int | None, what: str, *, path: Path | None = None
) -> None:
    for name, value in (("channel", channel), ("plane", plane)):
        if value is not None:
            raise InputError(
                f"--{name} {value!r} does not apply to {what}; leave --{name} out",
                path=path,
            )


def _no_roi(roi: int | None, what: str, *, path: Path | None = None) -> None:
    if roi is not None:
        raise InputError(
            f"--roi {roi!r} picks an imaging region of a ScanImage multi-ROI recording and does "
            f"not apply to {what}; leave --roi out",
            path=path,
        )
