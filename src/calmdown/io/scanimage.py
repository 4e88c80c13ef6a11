"""Read ScanImage TIFF files: one channel of one plane (of one ROI), de-interleaved lazily.

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
``SI.hRoiManager.mroiEnable``
    Multi-ROI pages (see below).

Channels and planes are counted as ScanImage counts them: channels by their ScanImage number
(the values of ``channelSave``), planes from 1 (the first slice of each volume is plane 1).

Multi-ROI (mROI) recordings (``SI.hRoiManager.mroiEnable = true``) store every imaging
region (ROI) of a frame in one tall page, stacked from the top in the order of the ROI
definitions, with a fixed number of "fly-to" lines (scanned while the beam moves on to the
next ROI; not image data) between neighbouring ROIs. The ROIs are read from the ROI-group JSON that
ScanImage saves in the header of its BigTIFF files (``tifffile.read_scanimage_metadata``) or,
where that is missing, in the ``Artist`` tag of the first page: ``RoiGroups`` ->
``imagingRoiGroup`` -> ``rois``, each with ``scanfields`` (one, or a list of one per z) whose
``pixelResolutionXY`` is ``[width, height]``. ROIs whose ``enable`` is false are not imaged and
are left out. With ``n`` ROIs of heights ``h_1 ... h_n`` in pages of ``H`` rows, the fly-to
lines between two ROIs number ``(H - sum(h)) / (n - 1)``; ROI ``i`` starts at row
``sum_{j<i} (h_j + flyto)`` and, when narrower than the page, takes its left ``width``
columns. One ROI is read at a time, as its own ``(T, height, width)`` movie, picked by its
number counted from 1 (``roi=``, ``--roi``). Multi-plane mROI recordings are read where every
ROI has the same pixel resolution at every z and is imaged at every plane (no
``discretePlaneMode``); other layouts are refused with a message.

Acquisitions split over several files are read, concatenated in time, by
:class:`calmdown.io.concat.ConcatReader` (pass their folder or a pattern to
:func:`calmdown.io.open_movie`).
"""

from __future__ import annotations

import json
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

__all__ = [
    "ScanImageLayout",
    "ScanImageReader",
    "ScanImageRoi",
    "is_scanimage",
    "scanimage_layout",
    "scanimage_rois",
]

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


@dataclass(frozen=True)
class ScanImageRoi:
    """Where one imaging region (ROI) lies in the tall page of a multi-ROI recording.

    Attributes
    ----------
    number : int
        The ROI's number, counted from 1 in the order of the ROI definitions (enabled ROIs
        only).
    name : str or None
        Its ``name`` in the ROI definitions, where there is one.
    width : int
        Columns (``pixelResolutionXY[0]``): the left ``width`` columns of the page.
    height : int
        Rows (``pixelResolutionXY[1]``).
    row : int
        The page row where it starts.
    """

    number: int
    name: str | None
    width: int
    height: int
    row: int

    def describe(self) -> str:
        """Return ``2 'name' (12 x 6 pixels)``: number, name and size (width x height)."""
        name = f" {self.name!r}" if self.name else ""
        return f"{self.number}{name} ({self.width} x {self.height} pixels)"


def _roi_size(roi: dict[str, Any], number: int) -> tuple[int, int]:
    """Return ``(width, height)`` of a ROI definition: the same in every scanfield."""
    fields = roi.get("scanfields")
    if isinstance(fields, dict):
        fields = [fields]
    if not isinstance(fields, list) or not fields:
        raise ValueError(f"ROI {number} has no scanfields")
    sizes = []
    for field in fields:
        value = field.get("pixelResolutionXY") if isinstance(field, dict) else None
        flat = list(np.ravel(np.asarray(value, dtype=object))) if isinstance(value, list) else []
        numbers = [n for n in map(_number, flat) if n is not None and n == int(n) and n >= 1]
        if len(flat) != 2 or len(numbers) != 2:
            raise ValueError(
                f"ROI {number} has pixelResolutionXY {value!r}, not [width, height] in pixels"
            )
        sizes.append((int(numbers[0]), int(numbers[1])))
    if len(set(sizes)) > 1:
        found = ", ".join(f"{w} x {h}" for w, h in dict.fromkeys(sizes))
        raise ValueError(
            f"ROI {number} changes its pixel resolution with z ({found} pixels), a multi-plane "
            "multi-ROI layout calmdown does not support"
        )
    return sizes[0]


def scanimage_rois(
    roidata: dict[str, Any], page_shape: tuple[int, int], *, planes: int = 1
) -> tuple[ScanImageRoi, ...]:
    """Find the imaging ROIs of a multi-ROI page from ScanImage's ROI-group JSON.

    Parameters
    ----------
    roidata : dict
        The parsed JSON, ``{"RoiGroups": {"imagingRoiGroup": {"rois": ...}}}`` (as
        ``tifffile.read_scanimage_metadata`` returns it, or as in the first page's ``Artist``
        tag); ``rois`` is one ROI or a list, each with ``scanfields`` (one, or a list of one per
        z) holding ``pixelResolutionXY = [width, height]``.
    page_shape : tuple of int
        ``(rows, columns)`` of a TIFF page, all ROIs and fly-to lines included.
    planes : int
        Planes per volume. With more than one, every ROI must be imaged at every plane with
        the same pixel resolution.

    Returns
    -------
    tuple of ScanImageRoi
        The enabled ROIs, top to bottom, separated by ``(rows - sum(heights)) / (n - 1)``
        fly-to lines.

    Raises
    ------
    ValueError
        When the ROI definitions are missing, disagree with the page size (their heights
        leave rows that do not split into a whole number of fly-to lines, or they are wider
        than the page), or describe a layout that is not supported.

    Examples
    --------
    >>> rois = [
    ...     {"name": "a", "scanfields": {"pixelResolutionXY": [12, 10]}},
    ...     {"name": "b", "scanfields": {"pixelResolutionXY": [12, 6]}},
    ... ]
    >>> found = scanimage_rois({"RoiGroups": {"imagingRoiGroup": {"rois": rois}}}, (20, 12))
    >>> [(r.row, r.height, r.width) for r in found]
    [(0, 10, 12), (14, 6, 12)]
    """
    groups = roidata.get("RoiGroups", roidata) if isinstance(roidata, dict) else None
    group = groups.get("imagingRoiGroup") if isinstance(groups, dict) else None
    rois = group.get("rois") if isinstance(group, dict) else None
    if isinstance(rois, dict):
        rois = [rois]  # MATLAB writes a one-element struct array as an object
    if not isinstance(rois, list) or not all(isinstance(r, dict) for r in rois):
        raise ValueError("the ROI definitions (RoiGroups, imagingRoiGroup, rois) are missing")
    enabled = [r for r in rois if r.get("enable") is None or _flag(r.get("enable"))]
    if not enabled:
        raise ValueError("the ROI definitions hold no enabled imaging ROI")
    page_rows, page_columns = page_shape
    sizes = []
    for number, roi in enumerate(enabled, start=1):
        if planes > 1 and _flag(roi.get("discretePlaneMode", False)):
            raise ValueError(
                f"ROI {number} is imaged at some planes only (discretePlaneMode), a "
                "multi-plane multi-ROI layout calmdown does not support"
            )
        sizes.append(_roi_size(roi, number))
    heights = [h for _, h in sizes]
    spare = page_rows - sum(heights)
    gaps = len(sizes) - 1
    if spare < 0 or (gaps and spare % gaps):
        raise ValueError(
            f"its {len(sizes)} ROIs are {' + '.join(str(h) for h in heights)} = {sum(heights)} "
            f"rows high, and pages of {page_rows} rows leave {spare} rows, which do not split "
            f"into a whole, non-negative number of fly-to lines between {gaps} pairs of ROIs; "
            "the ROI definitions do not match the pages"
        )
    flyto = spare // gaps if gaps else 0
    wide = [(n, w) for n, (w, _) in enumerate(sizes, start=1) if w > page_columns]
    if wide:
        number, width = wide[0]
        raise ValueError(
            f"ROI {number} is {width} pixels wide, wider than the pages ({page_columns}); the "
            "ROI definitions do not match the pages"
        )
    out = []
    row = 0
    for number, (roi, (width, height)) in enumerate(zip(enabled, sizes, strict=True), start=1):
        name = roi.get("name")
        name = name.strip() if isinstance(name, str) and name.strip() else None
        out.append(ScanImageRoi(number=number, name=name, width=width, height=height, row=row))
        row += height + flyto
    return tuple(out)


def _roidata(tif: tifffile.TiffFile) -> dict[str, Any]:
    """Return ScanImage's ROI-group JSON: from the BigTIFF header, else the Artist tag."""
    try:
        _, roidata, _ = tifffile.read_scanimage_metadata(tif.filehandle)
    except (ValueError, TypeError, UnicodeDecodeError):
        roidata = {}
    if isinstance(roidata, dict) and roidata:
        return dict(roidata)
    artist = tif.pages.first.tags.valueof(315)  # Artist
    if isinstance(artist, bytes):
        artist = artist.decode("utf-8", errors="replace")
    if not isinstance(artist, str) or not artist.strip():
        return {}
    try:
        parsed = json.loads(artist.strip().rstrip("\x00"))
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


class ScanImageReader(ReaderBase):
    r"""One channel of one plane (of one ROI) of a ScanImage TIFF, as a lazy ``(T, Y, X)`` movie.

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
    roi : int or None
        The imaging region of a multi-ROI recording, counted from 1 in the order of the ROI
        definitions (see the module notes). May be left out when the recording has one ROI;
        not accepted for other recordings.

    Attributes
    ----------
    metadata : dict
        ``frame_rate`` (Hz: the volume rate for a multi-plane recording, as each plane is
        sampled once a volume), ``zoom``, ``channels`` (all saved), ``planes`` (their number),
        ``channel`` and ``plane`` (the ones read), ``scanimage_version``; for a multi-ROI
        recording also ``roi`` (the one read), ``rois`` (their number) and ``roi_name``
        (where the ROI has one).
    layout : ScanImageLayout
        How the pages are interleaved.
    rois : tuple of ScanImageRoi
        The ROIs of a multi-ROI recording, empty for other recordings.
    unused_pages : int
        Pages after the last complete volume, ignored (an acquisition stopped mid-volume).

    Raises
    ------
    InputError
        When the file is unreadable, the ScanImage settings do not fit its pages, or the
        channel, plane or ROI is ambiguous or missing; messages list the choices.

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
        roi: int | None = None,
    ) -> None:
        path = Path(path)
        self.path = path
        self._lock = threading.Lock()
        self._channel_arg = channel
        self._plane_arg = plane
        self._roi_arg = roi
        try:
            # is_scanimage=False: read the real page offsets (tifffile would otherwise guess
            # them for classic ScanImage TIFFs, from the spacing of the first pages)
            self._tif = tifffile.TiffFile(path, is_scanimage=False)
        except Exception as err:  # tifffile raises TiffFileError, struct.error, ValueError, ...
            raise InputError(f"cannot read as a TIFF file ({err}); {_FIX}", path=path) from err
        try:
            self._setup(path, channel, plane, roi)
        except BaseException:
            self._tif.close()
            raise

    def _setup(self, path: Path, channel: int | None, plane: int | None, roi: int | None) -> None:
        try:
            framedata = _framedata(self._tif)
            mroi = _flag(framedata.get("SI.hRoiManager.mroiEnable", False))
            roidata = _roidata(self._tif) if mroi else {}
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
        self._page_shape = (page_shape[0], page_shape[1])
        self.rois = self._find_rois(path, layout, roidata, self._page_shape) if mroi else ()
        if not mroi and roi is not None:
            raise InputError(
                f"is not a ScanImage multi-ROI recording (SI.hRoiManager.mroiEnable is not "
                f"true): each page holds one image, so there is no ROI {roi!r} to pick; leave "
                "--roi out",
                path=path,
            )
        self.roi = self._pick_roi(path, self.rois, roi) if mroi else None
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
        if self.roi is not None:
            self.shape = (n_frames, self.roi.height, self.roi.width)
        else:
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
        if self.roi is not None:
            self.metadata["roi"] = self.roi.number
            self.metadata["rois"] = len(self.rois)
            if self.roi.name:
                self.metadata["roi_name"] = self.roi.name
        if rate is not None and not layout.slice_major:
            self.metadata["frame_rate"] = rate
        if layout.zoom is not None:
            self.metadata["zoom"] = layout.zoom
        if layout.version is not None:
            self.metadata["scanimage_version"] = layout.version
        logger.debug(
            "%s: ScanImage, %d pages: channels %s, %d planes (+%d flyback), %d ROIs; reading "
            "channel %s plane %d ROI %s, %s",
            path,
            n_pages,
            layout.channels,
            layout.planes,
            layout.flyback,
            len(self.rois),
            self.metadata["channel"],
            self.metadata["plane"],
            self.metadata.get("roi"),
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

    @staticmethod
    def _find_rois(
        path: Path, layout: ScanImageLayout, roidata: dict[str, Any], page_shape: tuple[int, int]
    ) -> tuple[ScanImageRoi, ...]:
        if not roidata:
            raise InputError(
                "is a ScanImage multi-ROI recording (SI.hRoiManager.mroiEnable is true), but "
                "its ROI definitions (the RoiGroups JSON of the ScanImage header or the Artist "
                "tag) are missing or unreadable, so its regions cannot be told apart; export "
                "the ROI to a plain (T, Y, X) TIFF with ScanImage or suite2p",
                path=path,
            )
        try:
            return scanimage_rois(roidata, page_shape, planes=layout.planes)
        except ValueError as err:
            raise InputError(
                f"has a multi-ROI layout that calmdown cannot read: {err}; export the ROI to a "
                "plain (T, Y, X) TIFF with ScanImage or suite2p",
                path=path,
            ) from err

    @staticmethod
    def _pick_roi(path: Path, rois: tuple[ScanImageRoi, ...], roi: int | None) -> ScanImageRoi:
        numbers = [r.number for r in rois]
        listing = "; ".join(r.describe() for r in rois)
        if roi is None:
            if len(rois) == 1:
                return rois[0]
            raise InputError(
                f"is a ScanImage multi-ROI recording of {len(rois)} ROIs ({listing}, width x "
                f"height); choose one with --roi {_choices(numbers)} (counted from 1; roi= in "
                "Python)",
                path=path,
            )
        if isinstance(roi, bool) or int(roi) != roi or not 1 <= roi <= len(rois):
            raise InputError(
                f"has no ROI {roi!r}; it holds {len(rois)} ROI(s) ({listing}): pass --roi "
                f"{_choices(numbers)} (counted from 1)",
                path=path,
            )
        return rois[int(roi) - 1]

    def _repr_fields(self) -> str:
        fields = f"channel={self.metadata.get('channel')} plane={self.metadata.get('plane')}"
        if self.roi is not None:
            fields += f" roi={self.roi.number}"
        return fields

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "channel": self._channel_arg,
            "plane": self._plane_arg,
            "roi": self._roi_arg,
        }

    def pages(self, start: int, stop: int) -> list[int]:
        """Return the indices of the TIFF pages that hold frames ``start:stop``."""
        return [
            self.layout.page(t, self._plane_index, self._channel_index) for t in range(start, stop)
        ]

    def _read(self, start: int, stop: int) -> np.ndarray:
        _, y, x = self.shape
        page_y, page_x = self._page_shape
        row = self.roi.row if self.roi is not None else 0  # a ROI: its rows, left columns
        out = np.empty((stop - start, y, x), dtype=np.float32)
        if start == stop:
            return out
        try:
            with self._lock, np.errstate(over="ignore", invalid="ignore"):
                for i, index in enumerate(self.pages(start, stop)):
                    page = self._tif.pages[index]
                    out[i] = page.asarray().reshape(page_y, page_x)[row : row + y, :x]
        except Exception as err:  # decoding errors of every kind from tifffile and codecs
            raise InputError(
                f"cannot read frames {start}:{stop} ({type(err).__name__}: {err}); {_FIX}",
                path=self.path,
            ) from err
        return check_finite(out, start, path=self.path) if self._check_values else out

    def close(self) -> None:
        """Close the file; reading afterwards raises ValueError."""
        super().close()
        self._tif.close()
