"""Read ScanImage TIFF files: one channel of one plane, de-interleaved lazily.

ScanImage (2016 and later) saves every channel of every plane of every volume as its own TIFF
page. The pages are ordered frame-major: for each volume, for each plane (slice), for each
saved channel. A slow stack (several frames per slice and no fast-z) is ordered slice-major
instead: for each slice, for each frame, for each channel. The acquisition settings that give
this layout are read from the ScanImage header of the file (``TiffFile.scanimage_metadata``)
or, where that is missing, from the ``Software`` tag of the first page, which ScanImage fills
with the same ``SI.*`` settings:

``SI.hChannels.channelSave``
    The saved channels, as ScanImage numbers them (e.g. ``[1;2]`` or ``2``).
``SI.hStackManager.actualNumSlices`` (else ``numSlices``)
    Planes per volume; ``SI.hStackManager.enable = false`` means one plane.
``SI.hFastZ.enable``, ``SI.hFastZ.discardFlybackFrames``, ``SI.hFastZ.numDiscardFlybackFrames``
    Fast-z flyback frames, stored after the planes of each volume and skipped here.
``SI.hStackManager.framesPerSlice``
    Frames per slice of a slow stack.
``SI.hRoiManager.scanFrameRate``, ``SI.hRoiManager.scanVolumeRate``
    Frame and volume rates (Hz); a plane's frames come at the volume rate.
``SI.hRoiManager.scanZoomFactor``
    The zoom.

Channels and planes are counted as ScanImage counts them: channels by their ScanImage number
(the values of ``channelSave``), planes from 1 (the first slice of each volume is plane 1).

Not supported: multi-ROI (mROI) pages, whose regions are stacked in one tall page.
Acquisitions split over several files are read, concatenated in time, by
:class:`calmdown.io.concat.ConcatReader` (pass their folder or a pattern to
:func:`calmdown.io.open_movie`).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from calmdown.errors import InputError
from calmdown.io.base import ReaderBase, check_dtype, check_finite

logger = logging.getLogger(__name__)

__all__ = ["ScanImageLayout", "ScanImageReader", "is_scanimage", "scanimage_layout"]

_FIX = "the file may be truncated or corrupt; check that it was copied completely"


def is_scanimage(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a TIFF file written by ScanImage.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file.

    Returns
    -------
    bool
        False also when the file cannot be read as TIFF (the TIFF reader then says why).
    """
    try:
        with tifffile.TiffFile(path, is_scanimage=False) as tif:
            return bool(tif.pages.first.is_scanimage)
    except Exception:  # noqa: BLE001 -- any unreadable file is simply not ScanImage
        return False


@dataclass(frozen=True)
class ScanImageLayout:
    """How the pages of a ScanImage file map to channels, planes and time.

    Attributes
    ----------
    channels : tuple of int
        Saved channels, by ScanImage number, in page order.
    planes : int
        Planes (slices) per volume, without flyback frames.
    flyback : int
        Flyback frames stored after the planes of each volume.
    frames_per_slice : int
        Frames per slice of a slow stack (slice-major order), else 1.
    frame_rate : float or None
        ScanImage's frame rate (Hz).
    volume_rate : float or None
        ScanImage's volume rate (Hz).
    zoom : float or None
        ScanImage's zoom factor.
    version : str or None
        ScanImage version, where the file says.
    """

    channels: tuple[int, ...]
    planes: int
    flyback: int = 0
    frames_per_slice: int = 1
    frame_rate: float | None = None
    volume_rate: float | None = None
    zoom: float | None = None
    version: str | None = None

    @property
    def slice_major(self) -> bool:
        """Whether pages are ordered slice by slice (a slow stack)."""
        return self.frames_per_slice > 1 and self.planes > 1

    @property
    def pages_per_volume(self) -> int:
        """Pages per time point of one plane (all channels, planes and flyback frames)."""
        return len(self.channels) * (self.planes + self.flyback)

    def n_frames(self, n_pages: int) -> int:
        """Return the number of complete time points in a file of `n_pages` pages."""
        if self.slice_major:
            return min(self.frames_per_slice, n_pages // (len(self.channels) * self.planes))
        return n_pages // self.pages_per_volume

    def page(self, frame: int, plane_index: int, channel_index: int) -> int:
        """Page index of a frame (0-based), plane (0-based) and channel (0-based position)."""
        n_channels = len(self.channels)
        if self.slice_major:
            return (plane_index * self.frames_per_slice + frame) * n_channels + channel_index
        return frame * self.pages_per_volume + plane_index * n_channels + channel_index


def _number(value: Any) -> float | None:
    """Return a finite float from a ScanImage value, or None."""
    if isinstance(value, (list, tuple)):
        flat = list(np.ravel(np.asarray(value, dtype=object)))
        value = flat[0] if len(flat) == 1 else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _flag(value: Any) -> bool:
    """Return a ScanImage logical (``true``/``false``/``1``/``0``) as a bool."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    number = _number(value)
    return bool(number) if number is not None else False


def _channel_list(value: Any) -> tuple[int, ...]:
    """Return the saved channels of ``SI.hChannels.channelSave`` (a number or a column)."""
    flat = np.ravel(np.asarray(value, dtype=object)) if isinstance(value, list) else [value]
    out = []
    for item in flat:
        number = _number(item)
        if number is None or number != int(number) or number < 1:
            raise ValueError(f"SI.hChannels.channelSave holds {value!r}, not channel numbers")
        out.append(int(number))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"SI.hChannels.channelSave holds {value!r}, not distinct channels")
    return tuple(out)


def scanimage_layout(framedata: dict[str, Any]) -> ScanImageLayout:
    """Work out the page layout from ScanImage's ``SI.*`` settings.

    Parameters
    ----------
    framedata : dict
        Flat mapping of ``"SI.hChannels.channelSave"`` and the like to parsed values, as
        ``TiffFile.scanimage_metadata["FrameData"]`` gives it.

    Returns
    -------
    ScanImageLayout
        Channels, planes, flyback frames, frame and volume rates, zoom.

    Raises
    ------
    ValueError
        When the settings contradict each other or are not numbers.

    Examples
    --------
    >>> layout = scanimage_layout(
    ...     {"SI.hChannels.channelSave": [[1], [2]], "SI.hStackManager.numSlices": 3}
    ... )
    >>> layout.channels, layout.planes, layout.page(1, 0, 1)
    ((1, 2), 3, 7)
    """
    get = framedata.get
    channels = _channel_list(get("SI.hChannels.channelSave", 1))
    stack_enabled = get("SI.hStackManager.enable")
    fast_z = _flag(get("SI.hFastZ.enable", False)) or get("SI.hStackManager.stackMode") == "fast"
    planes_value = get("SI.hStackManager.actualNumSlices", get("SI.hStackManager.numSlices", 1))
    planes_number = _number(planes_value)
    planes = int(planes_number) if planes_number is not None and planes_number >= 1 else 1
    if stack_enabled is not None and not _flag(stack_enabled) and not fast_z:
        planes = 1
    flyback = 0
    if fast_z and planes > 1 and _flag(get("SI.hFastZ.discardFlybackFrames", False)):
        found = _number(get("SI.hFastZ.numDiscardFlybackFrames", 0))
        flyback = int(found) if found is not None and found > 0 else 0
    frames_per_slice = 1
    if not fast_z and planes > 1:
        found = _number(get("SI.hStackManager.framesPerSlice", 1))
        frames_per_slice = int(found) if found is not None and found >= 1 else 1
    version = get("SI.VERSION_MAJOR")
    return ScanImageLayout(
        channels=channels,
        planes=planes,
        flyback=flyback,
        frames_per_slice=frames_per_slice,
        frame_rate=_number(get("SI.hRoiManager.scanFrameRate")),
        volume_rate=_number(get("SI.hRoiManager.scanVolumeRate")),
        zoom=_number(get("SI.hRoiManager.scanZoomFactor")),
        version=None if version is None else str(version),
    )


#: ScanImage 3 and 4 (``state.*`` in the image description) settings, as their later names.
_LEGACY = {
    "state.acq.numberOfChannelsSave": "channels",
    "state.acq.numberOfZSlices": "SI.hStackManager.numSlices",
    "state.acq.numberOfFrames": "SI.hStackManager.framesPerSlice",
    "state.acq.frameRate": "SI.hRoiManager.scanFrameRate",
    "state.acq.zoomFactor": "SI.hRoiManager.scanZoomFactor",
    "state.software.version": "SI.VERSION_MAJOR",
}


def _framedata(tif: tifffile.TiffFile) -> dict[str, Any]:
    """Return ScanImage's ``SI.*`` settings.

    From the header of a ScanImage BigTIFF, else the first page's Software tag (ScanImage 2016
    and later), else the ``state.*`` image description of ScanImage 3 and 4.
    """
    try:
        framedata, _, _ = tifffile.read_scanimage_metadata(tif.filehandle)
    except (ValueError, TypeError, UnicodeDecodeError):
        framedata = {}
    if isinstance(framedata, dict) and framedata:
        return dict(framedata)
    page = tif.pages.first
    software = page.software or ""
    if software.startswith("SI."):
        parsed = tifffile.matlabstr2py(software)
        if isinstance(parsed, dict):
            return parsed
    description = page.description or ""
    if description.startswith("state."):
        parsed = tifffile.matlabstr2py(description)
        if isinstance(parsed, dict):
            out = {new: parsed[old] for old, new in _LEGACY.items() if old in parsed}
            n = _number(out.pop("channels", 1))
            out["SI.hChannels.channelSave"] = [[c] for c in range(1, int(n or 1) + 1)]
            return out
    return {}


def _chain_complete(tif: tifffile.TiffFile) -> bool:
    """Whether the last page's IFD ends the chain (next offset 0) and its data are all there."""
    fmt = tif.tiff
    fh = tif.filehandle
    last = tif.pages[len(tif.pages) - 1]
    fh.seek(last.offset)
    count = fh.read(fmt.tagnosize)
    if len(count) < fmt.tagnosize:
        return False
    (tagno,) = struct.unpack(fmt.tagnoformat, count)
    fh.seek(last.offset + fmt.tagnosize + tagno * fmt.tagsize)
    raw = fh.read(fmt.offsetsize)
    if len(raw) < fmt.offsetsize or struct.unpack(fmt.offsetformat, raw)[0] != 0:
        return False
    ends = [o + n for o, n in zip(last.dataoffsets, last.databytecounts, strict=False)]
    return max(ends, default=0) <= fh.size


def _choices(values: Sequence[int]) -> str:
    return " or ".join(", ".join(str(v) for v in values).rsplit(", ", 1))


class ScanImageReader(ReaderBase):
    r"""One channel of one plane of a ScanImage TIFF, as a lazy ``(T, Y, X)`` movie.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file written by ScanImage.
    channel : int or None
        The channel, by its ScanImage number (one of ``SI.hChannels.channelSave``). May be
        left out when only one channel was saved.
    plane : int or None
        The plane, counted from 1 within each volume. May be left out for single-plane
        recordings.

    Attributes
    ----------
    metadata : dict
        ``frame_rate`` (Hz: the volume rate for a multi-plane recording, as each plane is
        sampled once a volume), ``zoom``, ``channels`` (all saved), ``planes`` (their number),
        ``channel`` and ``plane`` (the ones read), ``scanimage_version``.
    layout : ScanImageLayout
        How the pages are interleaved.
    unused_pages : int
        Pages after the last complete volume, ignored (an acquisition stopped mid-volume).

    Raises
    ------
    InputError
        When the file is unreadable, the ScanImage settings do not fit its pages, or the
        channel or plane is ambiguous or missing; messages list the choices.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "si.tif")
    >>> software = "SI.hChannels.channelSave = [1;2]\nSI.hRoiManager.scanFrameRate = 30"
    >>> with tifffile.TiffWriter(path, bigtiff=True) as tw:
    ...     for i in range(8):
    ...         tw.write(np.full((4, 4), i, "int16"), software=software, metadata=None)
    >>> with ScanImageReader(path, channel=2) as movie:
    ...     movie.shape, movie.read(0, 4)[:, 0, 0].tolist(), movie.metadata["frame_rate"]
    ((4, 4, 4), [1.0, 3.0, 5.0, 7.0], 30.0)
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
        self._lock = threading.Lock()
        self._channel_arg = channel
        self._plane_arg = plane
        try:
            # is_scanimage=False: read the real page offsets (tifffile would otherwise guess
            # them for classic ScanImage TIFFs, from the spacing of the first pages)
            self._tif = tifffile.TiffFile(path, is_scanimage=False)
        except Exception as err:  # tifffile raises TiffFileError, struct.error, ValueError, ...
            raise InputError(f"cannot read as a TIFF file ({err}); {_FIX}", path=path) from err
        try:
            self._setup(path, channel, plane)
        except BaseException:
            self._tif.close()
            raise

    def _setup(self, path: Path, channel: int | None, plane: int | None) -> None:
        try:
            framedata = _framedata(self._tif)
            first = self._tif.pages.first
            page_shape = tuple(int(n) for n in first.shape)
            self.dtype = np.dtype(first.dtype)
            self._tif.pages.useframes = True  # light-weight pages after the first
            n_pages = len(self._tif.pages)
            complete = _chain_complete(self._tif)
        except Exception as err:  # tifffile parses lazily; errors surface here
            raise InputError(f"cannot read the TIFF structure ({err}); {_FIX}", path=path) from err
        if not complete:
            raise InputError(
                f"is truncated: its pages stop after page {n_pages} where the file ends or "
                "breaks off; copy the file again",
                path=path,
            )
        try:
            layout = scanimage_layout(framedata)
        except ValueError as err:
            raise InputError(
                f"has ScanImage settings that calmdown cannot use ({err}); export the channel "
                "and plane to a plain (T, Y, X) TIFF",
                path=path,
            ) from err
        if len(page_shape) != 2:
            raise InputError(
                f"has ScanImage pages of shape {page_shape}, not 2-D grayscale frames; export "
                "the channel and plane to a plain (T, Y, X) TIFF",
                path=path,
            )
        check_dtype(self.dtype, path=path)
        self.layout = layout
        self._channel_index = self._pick_channel(path, layout, channel, plane)
        self._plane_index = self._pick_plane(path, layout, plane, channel)
        n_frames = layout.n_frames(n_pages)
        if n_frames == 0:
            raise InputError(
                f"has {n_pages} pages, fewer than one volume of {layout.pages_per_volume} "
                f"({len(layout.channels)} channels x {layout.planes + layout.flyback} planes); "
                "check the file and its ScanImage settings",
                path=path,
            )
        used = (
            n_frames * len(layout.channels) * layout.planes
            if layout.slice_major
            else n_frames * layout.pages_per_volume
        )
        self.unused_pages = n_pages - used
        if used < n_pages:
            warnings.warn(
                f"{path}: {n_pages - used} pages after the last complete volume are ignored (the "
                "acquisition was probably stopped mid-volume)",
                stacklevel=3,
            )
        self.shape = (n_frames, page_shape[0], page_shape[1])
        rate = layout.volume_rate if layout.planes > 1 else layout.frame_rate
        if rate is None and layout.planes > 1 and layout.frame_rate:
            rate = layout.frame_rate / (layout.planes + layout.flyback)
        self.metadata = {
            "axes": "TYX",
            "scanimage": True,
            "channels": list(layout.channels),
            "planes": layout.planes,
            "channel": layout.channels[self._channel_index],
            "plane": self._plane_index + 1,
        }
        if rate is not None and not layout.slice_major:
            self.metadata["frame_rate"] = rate
        if layout.zoom is not None:
            self.metadata["zoom"] = layout.zoom
        if layout.version is not None:
            self.metadata["scanimage_version"] = layout.version
        logger.debug(
            "%s: ScanImage, %d pages: channels %s, %d planes (+%d flyback); reading channel %s "
            "plane %d, %s",
            path,
            n_pages,
            layout.channels,
            layout.planes,
            layout.flyback,
            self.metadata["channel"],
            self.metadata["plane"],
            self.shape,
        )

    @staticmethod
    def _pick_channel(
        path: Path, layout: ScanImageLayout, channel: int | None, plane: int | None
    ) -> int:
        channels = layout.channels
        if channel is None:
            if len(channels) == 1:
                return 0
            also = "" if plane is not None or layout.planes == 1 else " and a plane with --plane"
            raise InputError(
                f"is a ScanImage recording of {len(channels)} channels ({_choices(channels)}) "
                f"and {layout.planes} plane(s); choose a channel with --channel "
                f"{_choices(channels)}{also} (channel= in Python)",
                path=path,
            )
        if isinstance(channel, bool) or int(channel) != channel or channel not in channels:
            raise InputError(
                f"has no channel {channel!r}; ScanImage saved channel(s) {_choices(channels)}: "
                "pass one of them with --channel",
                path=path,
            )
        return channels.index(int(channel))

    @staticmethod
    def _pick_plane(
        path: Path, layout: ScanImageLayout, plane: int | None, channel: int | None
    ) -> int:
        planes = layout.planes
        if plane is None:
            if planes == 1:
                return 0
            raise InputError(
                f"is a ScanImage volume recording of {planes} planes; choose one with --plane "
                f"1 to {planes} (counted from 1 within each volume; plane= in Python)",
                path=path,
            )
        if isinstance(plane, bool) or int(plane) != plane or not 1 <= plane <= planes:
            raise InputError(
                f"has no plane {plane!r}; it holds {planes} plane(s) per volume: pass --plane "
                f"1 to {planes} (counted from 1)",
                path=path,
            )
        return int(plane) - 1

    def _repr_fields(self) -> str:
        return f"channel={self.metadata.get('channel')} plane={self.metadata.get('plane')}"

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"path": self.path, "channel": self._channel_arg, "plane": self._plane_arg}

    def pages(self, start: int, stop: int) -> list[int]:
        """Return the indices of the TIFF pages that hold frames ``start:stop``."""
        return [
            self.layout.page(t, self._plane_index, self._channel_index) for t in range(start, stop)
        ]

    def _read(self, start: int, stop: int) -> np.ndarray:
        _, y, x = self.shape
        out = np.empty((stop - start, y, x), dtype=np.float32)
        if start == stop:
            return out
        try:
            with self._lock, np.errstate(over="ignore", invalid="ignore"):
                for i, index in enumerate(self.pages(start, stop)):
                    page = self._tif.pages[index]
                    out[i] = page.asarray().reshape(y, x)
        except Exception as err:  # decoding errors of every kind from tifffile and codecs
            raise InputError(
                f"cannot read frames {start}:{stop} ({type(err).__name__}: {err}); {_FIX}",
                path=self.path,
            ) from err
        return check_finite(out, start, path=self.path)

    def close(self) -> None:
        """Close the file; reading afterwards raises ValueError."""
        super().close()
        self._tif.close()
