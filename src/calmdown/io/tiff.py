"""Read TIFF movies (``.tif``, ``.tiff``, ``.btf``) with tifffile, lazily.

Three ways to get frames, chosen once when the file is opened:

``"memmap"``
    Uncompressed, contiguous data (what :class:`calmdown.io.write.MovieWriter` and most
    acquisition software write) are memory-mapped; reading a block touches only its bytes.
``"pages"``
    One page per frame (compressed, or pages scattered through the file): the pages of the
    block are decoded with ``TiffPageSeries.asarray(key=slice(start, stop))``.
``"zarr"``
    Anything else (tiled or multi-frame pages): ``TiffPageSeries.aszarr()`` opened with zarr.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from calmdown.errors import InputError
from calmdown.io.base import ReaderBase, check_dtype, movie_axes

logger = logging.getLogger(__name__)

__all__ = ["TiffReader"]

_FIX = "the file may be truncated or corrupt; check that it was copied completely"


def _open_tiff(path: Path, **flags: bool) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path, **flags)
    except Exception as err:  # tifffile raises TiffFileError, struct.error, ValueError, ...
        raise InputError(f"cannot read as a TIFF file ({err}); {_FIX}", path=path) from err


def _frame_rate(tif: tifffile.TiffFile) -> float | None:
    """Return the frame rate in Hz, where ScanImage, ImageJ or tifffile metadata give one."""
    try:
        if tif.is_scanimage:
            frame = (tif.scanimage_metadata or {}).get("FrameData", {})
            rate = frame.get("SI.hRoiManager.scanVolumeRate") or frame.get(
                "SI.hRoiManager.scanFrameRate"
            )
            if rate:
                return float(rate)
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
            if meta.get("finterval"):
                return 1.0 / float(meta["finterval"])
            if meta.get("fps"):
                return float(meta["fps"])
        if tif.is_shaped:
            meta = (tif.shaped_metadata or ({},))[0]
            if meta.get("frame_rate"):
                return float(meta["frame_rate"])
    except (TypeError, ValueError, ZeroDivisionError, KeyError, AttributeError) as err:
        logger.debug("%s: ignoring unreadable frame-rate metadata: %s", tif.filename, err)
    return None


def _frames_as_series(tif: tifffile.TiffFile) -> bool:
    """Whether a shaped file stores one series per frame (each page written on its own)."""
    series = tif.series
    if len(series) < 2 or len(series[0].shape) != 2:
        return False
    first = series[0]
    return all(s.shape == first.shape and s.dtype == first.dtype for s in series)


def _declared_size(tif: tifffile.TiffFile) -> int | None:
    """Return the number of pixels that tifffile or ImageJ metadata promise, if they say."""
    try:
        if tif.is_shaped and tif.shaped_metadata:
            return int(np.prod(tif.shaped_metadata[0]["shape"]))
        if tif.is_imagej and tif.imagej_metadata and tif.imagej_metadata.get("images"):
            page = tif.pages[0]
            return int(tif.imagej_metadata["images"]) * int(np.prod(page.shape))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        logger.debug("%s: ignoring unreadable shape metadata: %s", tif.filename, err)
    return None


def _pick_axes(
    path: Path,
    shape: tuple[int, ...],
    axes: str,
    *,
    channel: int | None,
    plane: int | None,
) -> dict[int, int]:
    """Map the channel (``C``) and plane (``Z``) axes to the index chosen, checking the choice.

    Returns
    -------
    dict
        Axis number to the 0-based index read along it.

    Raises
    ------
    InputError
        When a choice is out of range, given for a file without that axis, or missing where
        the axis has several entries (listing the choices).
    """
    fixed: dict[int, int] = {}
    labelled = len(axes) == len(shape)
    missing = []
    for name, letter, value in (("channel", "C", channel), ("plane", "Z", plane)):
        n = shape[axes.index(letter)] if labelled and letter in axes else None
        if value is None:
            if n is not None and n > 1:
                missing.append(f"--{name} 1 to {n}")
            continue
        if n is None:
            raise InputError(
                f"has no {name} axis ({letter}) to choose from (axes {axes}, shape {shape}); "
                f"leave --{name} out",
                path=path,
            )
        if isinstance(value, bool) or int(value) != value or not 1 <= value <= n:
            raise InputError(
                f"has no {name} {value!r}: its {name} axis ({letter}) holds {n}; pass --{name} "
                f"1 to {n} (counted from 1)",
                path=path,
            )
        fixed[axes.index(letter)] = int(value) - 1
    if missing:
        raise InputError(
            f"expected a 3-D movie (T, Y, X) but the file holds a {len(shape)}-D array of shape "
            f"{shape} (axes {axes}); choose a single channel or plane with "
            f"{' and '.join(missing)} (channel=, plane= in Python, counted from 1)",
            path=path,
        )
    return fixed


class TiffReader(ReaderBase):
    """A TIFF movie of shape ``(T, Y, X)``, read block by block without loading the file.

    The first series of the file is the movie. A file written one page per frame by a
    program that labels each page as its own series is read as one movie of all its pages.

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF file (classic or BigTIFF; ImageJ, OME and tifffile flavours; ScanImage files
        are better read by :class:`calmdown.io.scanimage.ScanImageReader`, which
        :func:`calmdown.io.open_movie` picks for them).
    channel : int or None
        For a file with a channel axis (``C``) of several channels: the one to read, counted
        from 1. Required when there are several.
    plane : int or None
        For a file with a depth axis (``Z``) of several planes: the one to read, counted from 1.
        Required when there are several.

    Attributes
    ----------
    access : str
        How frames are read: ``"memmap"``, ``"pages"`` or ``"zarr"`` (see the module notes).

    Raises
    ------
    InputError
        When the file is not a readable TIFF, is truncated, or holds no numeric movie.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        channel: int | None = None,
        plane: int | None = None,
    ) -> None:
        path = Path(path)
        self.path = path
        self._picks = {"channel": channel, "plane": plane}
        self._lock = threading.Lock()
        self._zarr_store: Any = None
        self._tif = _open_tiff(path)
        try:
            self._setup(path)
        except BaseException:
            self.close()
            raise

    def _setup(self, path: Path) -> None:
        try:
            if _frames_as_series(self._tif):
                logger.debug("%s: one series per page; reading all pages as frames", path)
                self._tif.close()
                self._tif = _open_tiff(path, is_shaped=False)
            if not self._tif.series:
                raise InputError(f"holds no readable image data; {_FIX}", path=path)
            series = self._tif.series[0]
            full_shape = tuple(int(n) for n in series.shape)
            axes = series.axes
            self.dtype = np.dtype(series.dtype)
            offset = series.dataoffset
            byteorder = self._tif.byteorder
            npages = len(series.pages)
            page_shape = tuple(int(n) for n in series.keyframe.shape)
            rate = _frame_rate(self._tif)
            declared = _declared_size(self._tif)
        except InputError:
            raise
        except Exception as err:  # tifffile parses lazily; errors surface here
            raise InputError(f"cannot read the TIFF structure ({err}); {_FIX}", path=path) from err
        found = int(np.prod(full_shape))
        if declared is not None and declared > found:
            raise InputError(
                f"is truncated: its metadata promise {declared} pixels but only {found} "
                f"(shape {full_shape}) can be read; copy the file again",
                path=path,
            )
        check_dtype(self.dtype, path=path)
        fixed = _pick_axes(path, full_shape, axes, **self._picks)
        free = [axis for axis in range(len(full_shape)) if axis not in fixed]
        kept = movie_axes(
            tuple(full_shape[axis] for axis in free),
            path=path,
            axes="".join(axes[axis] for axis in free) if len(axes) == len(full_shape) else None,
        )
        keep = tuple(free[axis] for axis in kept)
        t, y, x = (full_shape[axis] for axis in keep)
        self.shape = (t, y, x)
        self.metadata = {"axes": axes}
        for name, letter in (("channel", "C"), ("plane", "Z")):
            if self._picks[name] is not None:
                self.metadata[name] = self._picks[name]
            if letter in axes and len(axes) == len(full_shape):
                self.metadata[f"{name}s"] = full_shape[axes.index(letter)]
        if rate is not None:
            self.metadata["frame_rate"] = rate
        self._series = series
        self._index = tuple(
            slice(None) if axis in keep else fixed.get(axis, 0) for axis in range(len(full_shape))
        )
        self._time_axis = keep[0]
        nbytes = int(np.prod(full_shape)) * self.dtype.itemsize
        if offset is not None:
            size = path.stat().st_size
            if offset + nbytes > size:
                raise InputError(
                    f"is truncated: the movie {full_shape} needs {offset + nbytes} bytes but the "
                    f"file has {size}; copy the file again",
                    path=path,
                )
            self._source: Any = np.memmap(
                path,
                dtype=np.dtype(byteorder + self.dtype.char),
                mode="r",
                offset=offset,
                shape=full_shape,
            )
            self.access = "memmap"
        elif npages == t and int(np.prod(page_shape)) == y * x:
            self._source = None
            self.access = "pages"
        else:
            import zarr  # only for tiled or multi-frame pages

            try:
                self._zarr_store = series.aszarr()
                self._source = zarr.open(self._zarr_store, mode="r")
            except Exception as err:  # tifffile or zarr failing on an odd layout
                raise InputError(f"cannot read the TIFF layout ({err}); {_FIX}", path=path) from err
            self.access = "zarr"
        logger.debug("%s: %s %s, read by %s", path, full_shape, self.dtype, self.access)

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"path": self.path, **self._picks}

    def _read(self, start: int, stop: int) -> np.ndarray:
        _, y, x = self.shape
        if start == stop:
            return np.empty((0, y, x), dtype=np.float32)
        try:
            if self.access == "pages":
                with self._lock:
                    block = self._series.asarray(key=slice(start, stop))
                block = block.reshape(stop - start, y, x)
            else:
                index = list(self._index)
                index[self._time_axis] = slice(start, stop)
                if self.access == "memmap":
                    block = self._source[tuple(index)]
                else:
                    with self._lock:
                        block = np.asarray(self._source[tuple(index)])
        except Exception as err:  # decoding errors of every kind from tifffile and codecs
            raise InputError(
                f"cannot read frames {start}:{stop} ({type(err).__name__}: {err}); {_FIX}",
                path=self.path,
            ) from err
        return self._to_float32(block, start)

    def close(self) -> None:
        """Close the file; reading afterwards raises ValueError."""
        super().close()
        if self._zarr_store is not None:
            self._zarr_store.close()
            self._zarr_store = None
        self._source = None
        self._tif.close()
