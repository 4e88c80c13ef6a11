"""How many planes a volumetric recording holds, without reading its frames.

Planes are what ``--plane`` (``plane=``) picks: the slices of a ScanImage volume, the ``Z``
axis of another TIFF, the depth axis of a 4-D NWB TwoPhotonSeries, the planes of a Scanbox
volume scan. Other formats hold one plane per file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from calmdown.errors import InputError
from calmdown.io.base import READ_FORMATS

logger = logging.getLogger(__name__)

__all__ = ["count_planes"]

_FIX = "the file may be truncated or corrupt; check that it was copied completely"


def count_planes(source: object, *, key: str | None = None) -> int | None:
    """Return the number of planes of a recording, or None for a format without planes.

    Parameters
    ----------
    source : str, os.PathLike or other
        What :func:`calmdown.io.open_movie` opens. For a recording split over several files
        (a folder of numbered files, a glob pattern) the first file is asked. Arrays and
        open readers hold one plane: None.
    key : str or None
        The TwoPhotonSeries of an NWB file holding several.

    Returns
    -------
    int or None
        ScanImage: planes per volume (1 for a single-plane recording). Other TIFFs: the length
        of the ``Z`` axis, None without one. NWB: the depth of a 4-D series, None for a 3-D
        one. Scanbox: planes per volume (1 without a volume scan). HDF5, zarr, ``.npy``,
        suite2p, arrays: None.

    Raises
    ------
    InputError
        When the file is missing or cannot be read.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "zstack.tif")
    >>> movie = np.zeros((4, 3, 5, 6), "u2")
    >>> tifffile.imwrite(path, movie, photometric="minisblack", metadata={"axes": "TZYX"})
    >>> count_planes(path)
    3
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    from calmdown.io.concat import has_glob, multi_file_parts

    path = Path(source).expanduser()
    if (has_glob(source) and not path.exists()) or (
        path.is_dir() and path.suffix.lower() not in READ_FORMATS
    ):
        parts = multi_file_parts(source)
        if parts:
            path = parts[0]
    if not path.exists():
        raise InputError("no such file; check the path", path=path)
    fmt = READ_FORMATS.get(path.suffix.lower())
    if fmt == "tiff" and path.is_file():
        return _tiff_planes(path)
    if fmt == "nwb":
        return _nwb_planes(path, key)
    from calmdown.io.sbx import is_sbx_settings, sbx_layout

    if fmt == "sbx" or is_sbx_settings(path):
        return sbx_layout(path).planes
    return None


def _tiff_planes(path: Path) -> int | None:
    import tifffile

    from calmdown.io.scanimage import _framedata, is_scanimage, scanimage_layout

    try:
        if is_scanimage(path):
            with tifffile.TiffFile(path, is_scanimage=False) as tif:
                framedata = _framedata(tif)
            return scanimage_layout(framedata).planes
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
    except Exception as err:  # tifffile raises TiffFileError, struct.error, ValueError, ...
        raise InputError(f"cannot read as a TIFF file ({err}); {_FIX}", path=path) from err
    if "Z" in axes and len(axes) == len(shape):
        return int(shape[axes.index("Z")])
    return None


def _nwb_planes(path: Path, key: str | None) -> int | None:
    from calmdown.io.nwb import _find_series, _open

    io, nwbfile = _open(path, "r")
    try:
        _, series = _find_series(path, nwbfile, key)
        shape = tuple(int(n) for n in series.data.shape)
    finally:
        io.close()
    return shape[3] if len(shape) == 4 else None
