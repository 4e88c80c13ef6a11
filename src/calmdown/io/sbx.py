"""Read Neurolabware Scanbox recordings (``name.sbx`` with ``name.mat`` beside it), memory-mapped.

Scanbox writes the frames to ``name.sbx`` as raw little-endian ``uint16`` with no header, each
value stored inverted (``65535 - value``), and the settings to ``name.mat``: a MATLAB struct
``info``. What this reader takes from it:

- ``info.sz``: the frame size ``[lines, pixels per line]``;
- the channels: ``info.chan.nchan`` (Scanbox 3 and later) or, before, ``info.channels`` (1: both
  PMTs, two channels stored; 2: PMT 0 only; 3: PMT 1 only);
- the planes of a volume scan (an electrically tunable lens): ``info.volscan`` and the lens
  positions ``info.otwave`` (or ``info.etl_table``), one per plane;
- the frame rate: ``info.resfreq / info.config.lines``, twice that for bidirectional scanning
  (``info.scanmode == 0``), times ``lines / fold_lines`` for folded frames, divided by the
  planes for the rate per plane;
- the zoom: ``info.config.magnification_list[info.config.magnification - 1]``.

The file holds, in order, frames; each frame, planes; each plane, lines; each line, pixels;
each pixel, channels. Channels and planes are numbered from 1 as stored. Bytes after the last
complete volume (an acquisition stopped mid-volume) are ignored with a warning.

Bidirectional recordings start with a few columns that the digitizer did not fill (their width
is not in the file); they are read as they are, so the output keeps the frame size of the input.

The format is read from its description (Scanbox's documentation and the MATLAB ``sbxread``);
no third-party reader is used.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import ReaderBase, release_mapped_pages

logger = logging.getLogger(__name__)

__all__ = ["SbxLayout", "SbxReader", "is_sbx_settings", "read_sbx_info", "sbx_layout", "sbx_paths"]

_INVERT = np.float32(np.iinfo(np.uint16).max)
_FIX = "the file may be truncated or corrupt; check that it was copied completely"


def is_sbx_settings(path: Path) -> bool:
    """Whether `path` is the ``.mat`` settings file of a Scanbox recording (``.sbx`` beside it)."""
    return path.suffix.lower() == ".mat" and path.with_suffix(".sbx").is_file()


def sbx_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(name.sbx, name.mat)`` for either of the two files of a Scanbox recording.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.sbx`` file or its ``.mat`` settings file.

    Returns
    -------
    tuple of Path
        The frames and the settings.

    Raises
    ------
    InputError
        When either file is missing.
    """
    path = Path(path)
    sbx, mat = path.with_suffix(".sbx"), path.with_suffix(".mat")
    for needed, what in ((sbx, "frames"), (mat, "settings")):
        if not needed.is_file():
            raise InputError(
                f"is a Scanbox recording without its {what} file {needed.name}; Scanbox writes "
                f"name.sbx and name.mat side by side: copy {needed.name} into {needed.parent}",
                path=path,
            )
    return sbx, mat


def read_sbx_info(mat: Path) -> dict[str, Any]:
    """Load the ``info`` struct of a Scanbox ``.mat`` file as nested dicts.

    Parameters
    ----------
    mat : Path
        The settings file.

    Returns
    -------
    dict
        ``info``, MATLAB structs as dicts and arrays squeezed.

    Raises
    ------
    InputError
        When the file cannot be read as a MATLAB file or holds no ``info`` struct.
    """
    from scipy.io import loadmat

    try:
        data = loadmat(mat, simplify_cells=True)
    except NotImplementedError as err:  # MATLAB 7.3 files are HDF5
        raise InputError(
            f"is a MATLAB 7.3 (HDF5) file, which Scanbox does not write ({err}); save the info "
            "struct again in MATLAB with save(name, 'info', '-v7')",
            path=mat,
        ) from err
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... on damage
        raise InputError(
            f"cannot read the Scanbox settings ({type(err).__name__}: {err}); {_FIX}",
            path=mat,
        ) from err
    info = data.get("info")
    if not isinstance(info, dict):
        raise InputError(
            "holds no Scanbox 'info' struct; pass the .mat file that Scanbox wrote beside the "
            ".sbx file (same name)",
            path=mat,
        )
    return info


class SbxLayout:
    """How a Scanbox file lays out its frames, from its ``info`` struct.

    Attributes
    ----------
    lines, pixels : int
        Rows and columns of a frame.
    channels : int
        Channels stored per pixel.
    planes : int
        Planes per volume (1 without a volume scan).
    frame_rate : float or None
        Volumes per second (frames per second of each plane), where the settings give it.
    zoom : float or None
        The magnification.
    bidirectional : bool
        Whether the scan was bidirectional.
    version : int or None
        ``info.scanbox_version``.
    pmt : int or None
        For a single-channel recording of Scanbox 2 or earlier, the PMT stored (0 or 1).
    """

    def __init__(self, info: dict[str, Any], *, path: Path) -> None:
        size = np.ravel(np.asarray(info.get("sz", []), dtype=float))
        if size.size != 2 or not np.all(size >= 1) or not np.all(size == np.round(size)):
            raise InputError(
                f"gives no valid frame size (info.sz = {info.get('sz')!r}); it is not a complete "
                "Scanbox settings file: use the .mat file Scanbox wrote with the recording",
                path=path,
            )
        self.lines, self.pixels = int(size[0]), int(size[1])
        self.pmt: int | None = None
        chan = info.get("chan")
        if isinstance(chan, dict) and _integer(chan.get("nchan")) is not None:
            self.channels = int(chan["nchan"])
        else:
            code = _integer(info.get("channels"))
            if code not in (1, 2, 3):
                raise InputError(
                    f"does not say how many channels were stored (info.chan.nchan missing, "
                    f"info.channels = {info.get('channels')!r}, expected 1, 2 or 3); use the .mat "
                    "file Scanbox wrote with the recording",
                    path=path,
                )
            self.channels = 2 if code == 1 else 1
            self.pmt = None if code == 1 else code - 2
        if self.channels < 1:
            raise InputError(
                f"says {self.channels} channels were stored; check the file", path=path
            )
        self.planes = _planes(info)
        self.bidirectional = _integer(info.get("scanmode")) == 0
        self.version = _integer(info.get("scanbox_version"))
        config = info.get("config") if isinstance(info.get("config"), dict) else {}
        self.frame_rate = self._rate(info, config)
        self.zoom = self._zoom(config)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one stored frame (one plane, every channel)."""
        return self.lines * self.pixels * self.channels * 2

    def _rate(self, info: dict[str, Any], config: dict[str, Any]) -> float | None:
        resfreq, lines = _number(info.get("resfreq")), _number(config.get("lines"))
        if not resfreq or not lines:
            return None
        rate = resfreq / lines * (2.0 if self.bidirectional else 1.0)
        fold = _number(info.get("fold_lines"))
        if fold:
            rate *= lines / fold
        return rate / self.planes

    @staticmethod
    def _zoom(config: dict[str, Any]) -> float | None:
        index = _integer(config.get("magnification"))
        choices = np.ravel(np.asarray(config.get("magnification_list", []), dtype=object))
        if index is None or not 1 <= index <= choices.size:
            return None
        return _number(choices[index - 1])

    def describe(self) -> str:
        """One line for messages: frame size, channels, planes."""
        return (
            f"{self.lines} x {self.pixels} pixels, {self.channels} channel(s), "
            f"{self.planes} plane(s)"
        )


def sbx_layout(path: str | os.PathLike[str]) -> SbxLayout:
    """Read the layout of a Scanbox recording from its ``.mat`` file, without its frames.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.sbx`` file or its ``.mat`` settings file.

    Returns
    -------
    SbxLayout
        Frame size, channels, planes, frame rate and zoom.
    """
    _, mat = sbx_paths(path)
    return SbxLayout(read_sbx_info(mat), path=mat)


class SbxReader(ReaderBase):
    """One channel of one plane of a Scanbox recording, memory-mapped.

    Parameters
    ----------
    path : str or os.PathLike
        ``name.sbx`` (or ``name.mat``), with the other file beside it.
    channel : int or None
        The channel to read, counted from 1 as stored; may be left out when one was stored.
    plane : int or None
        The plane of a volume scan, counted from 1; may be left out for a single plane.

    Attributes
    ----------
    layout : SbxLayout
        What the settings say.
    metadata : dict
        ``frame_rate`` (per plane, Hz) and ``zoom`` where the settings give them, ``channels``,
        ``planes``, ``channel``, ``plane``, ``bidirectional``, ``scanbox_version``.

    Raises
    ------
    InputError
        When a file is missing or damaged, the channel or plane is missing or out of range, or
        the recording holds less than one volume.

    Examples
    --------
    >>> import numpy as np, scipy.io, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> info = {"sz": [2, 3], "chan": {"nchan": 1}, "scanmode": 1, "resfreq": 8000.0,
    ...         "config": {"lines": 400}}
    >>> scipy.io.savemat(folder / "rec.mat", {"info": info})
    >>> (65535 - np.arange(24, dtype="<u2")).tofile(folder / "rec.sbx")
    >>> with SbxReader(folder / "rec.sbx") as movie:
    ...     movie.shape, movie.read(3, 4)[0, 1].tolist(), movie.metadata["frame_rate"]
    ((4, 2, 3), [21.0, 22.0, 23.0], 20.0)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        channel: int | None = None,
        plane: int | None = None,
    ) -> None:
        self._args: dict[str, Any] = {"path": Path(path), "channel": channel, "plane": plane}
        sbx, mat = sbx_paths(path)
        self.path = sbx
        self.layout = layout = SbxLayout(read_sbx_info(mat), path=mat)
        self._channel = _pick(sbx, "channel", channel, layout.channels, layout, other=plane)
        self._plane = _pick(sbx, "plane", plane, layout.planes, layout, other=channel)
        size = sbx.stat().st_size
        stored, extra = divmod(size, layout.frame_bytes)
        n_frames, partial = divmod(stored, layout.planes)
        if n_frames == 0:
            raise InputError(
                f"has {size} bytes, less than one volume ({layout.describe()}: "
                f"{layout.frame_bytes * layout.planes} bytes); {_FIX}, and that {mat.name} "
                "belongs to it",
                path=sbx,
            )
        if extra or partial:
            warnings.warn(
                f"{sbx}: {extra + partial * layout.frame_bytes} bytes after the last complete "
                f"volume are ignored (the acquisition was probably stopped mid-volume, or the "
                "copy is incomplete)",
                stacklevel=2,
            )
        self.dtype = np.dtype(np.uint16)
        self.shape = (n_frames, layout.lines, layout.pixels)
        self._map: np.memmap | None = np.memmap(
            sbx,
            dtype="<u2",
            mode="r",
            shape=(n_frames, layout.planes, layout.lines, layout.pixels, layout.channels),
        )
        self.metadata: dict[str, object] = {
            "axes": "TYX",
            "scanbox": True,
            "channels": layout.channels,
            "planes": layout.planes,
            "channel": self._channel + 1,
            "plane": self._plane + 1,
            "bidirectional": layout.bidirectional,
        }
        if layout.frame_rate is not None:
            self.metadata["frame_rate"] = layout.frame_rate
        if layout.zoom is not None:
            self.metadata["zoom"] = layout.zoom
        if layout.version is not None:
            self.metadata["scanbox_version"] = layout.version
        if layout.pmt is not None:
            self.metadata["pmt"] = layout.pmt
        logger.debug("%s: Scanbox, %s; reading %s", sbx, layout.describe(), self.shape)

    def _repr_fields(self) -> str:
        return f"channel={self._channel + 1} plane={self._plane + 1}"

    def _reopen_kwargs(self) -> dict[str, Any]:
        return self._args

    def _read(self, start: int, stop: int) -> np.ndarray:
        assert self._map is not None  # read() refuses a closed reader
        try:
            block = self._map[start:stop, self._plane, :, :, self._channel]
            out = np.subtract(_INVERT, block, dtype=np.float32)
            release_mapped_pages(block)
        except OSError as err:  # the file shrank or its medium went away under the map
            raise InputError(
                f"cannot read frames {start}:{stop} ({err}); {_FIX}", path=self.path
            ) from err
        return out

    def close(self) -> None:
        """Drop the memory map; later reads fail."""
        super().close()
        self._map = None


def _pick(
    path: Path, name: str, value: int | None, count: int, layout: SbxLayout, *, other: int | None
) -> int:
    """Return the index of the channel or plane asked for (counted from 1), checked."""
    if value is None:
        if count == 1:
            return 0
        raise InputError(
            f"is a Scanbox recording of {layout.describe()}; choose a {name} with --{name} 1 to "
            f"{count} ({name}= in Python)",
            path=path,
        )
    if isinstance(value, bool) or int(value) != value or not 1 <= value <= count:
        raise InputError(
            f"has no {name} {value!r}; it holds {count} {name}(s): pass --{name} 1 to {count} "
            "(counted from 1)",
            path=path,
        )
    return int(value) - 1


def _planes(info: dict[str, Any]) -> int:
    """Return the planes per volume: the lens positions of a volume scan, else 1."""
    volscan = info.get("volscan")
    if volscan is not None and not _integer(volscan):
        return 1
    for key in ("otwave", "etl_table"):
        table = info.get(key)
        if table is None or isinstance(table, (int, float)):
            continue
        rows = np.asarray(table, dtype=object)
        n = rows.shape[0] if rows.ndim else 0
        if n >= 1:
            return int(n)
    return 1


def _number(value: Any) -> float | None:
    """Return a settings value as a finite float, or None."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if array.size != 1 or not np.isfinite(array).all():
        return None
    return float(array.ravel()[0])


def _integer(value: Any) -> int | None:
    """Return a settings value as an integer, or None."""
    number = _number(value)
    if number is None or number != round(number):
        return None
    return int(number)
