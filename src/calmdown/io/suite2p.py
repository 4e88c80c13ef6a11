"""Read suite2p's registered binary movies (``data.bin`` beside ``ops.npy``), memory-mapped.

suite2p writes each plane's registered movie as raw ``int16`` frames of ``Ly x Lx`` pixels
(C order, no header) to ``suite2p/planeN/data.bin``, and its settings to ``ops.npy`` in the
same folder: ``Ly``, ``Lx``, ``nframes``, ``fs`` (frame rate per plane, Hz), ``reg_file``
(path of ``data.bin``) and, for a second channel, ``reg_file_chan2`` (``data_chan2.bin``).

``reg_file`` is often an absolute path on the machine that ran suite2p; when it does not exist
here, the file of the same name beside ``ops.npy`` is read instead.

Channels are numbered as suite2p numbers them, from 1: channel 1 is ``data.bin``, channel 2
``data_chan2.bin``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import SlicedReader

logger = logging.getLogger(__name__)

__all__ = ["Suite2pReader", "find_suite2p_plane", "is_suite2p", "load_ops"]

_BIN_NAMES = {1: ("reg_file", "data.bin"), 2: ("reg_file_chan2", "data_chan2.bin")}


def is_suite2p(path: Path) -> bool:
    """Whether `path` is a suite2p plane folder, a suite2p root, ``ops.npy`` or a ``.bin`` file.

    Parameters
    ----------
    path : Path
        A file or folder.

    Returns
    -------
    bool
        True for a folder holding ``ops.npy`` (or ``plane*/ops.npy``), an ``ops.npy`` file,
        or a ``.bin`` file.
    """
    if path.is_dir():
        return (path / "ops.npy").is_file() or any(path.glob("plane*/ops.npy"))
    return path.name.lower() == "ops.npy" or path.suffix.lower() == ".bin"


def load_ops(path: Path) -> dict[str, Any]:
    """Load suite2p's ``ops.npy`` (a pickled dict, as suite2p saves it).

    Parameters
    ----------
    path : Path
        The ``ops.npy`` file. It is unpickled: open only files you trust, as with suite2p.

    Returns
    -------
    dict
        The settings.

    Raises
    ------
    InputError
        When the file is not a suite2p ``ops.npy``.
    """
    try:
        ops = np.load(path, allow_pickle=True)
    except Exception as err:  # pickle raises many types for a damaged file
        raise InputError(
            f"cannot read suite2p settings ({type(err).__name__}: {err}); the file may be "
            "truncated; run suite2p again or pass data.bin with its ops.npy beside it",
            path=path,
        ) from err
    if isinstance(ops, np.ndarray) and ops.dtype == object and ops.shape == ():
        ops = ops.item()
    if not isinstance(ops, dict):
        raise InputError(
            "is not a suite2p ops.npy (it holds no settings dictionary); pass the plane folder "
            "that suite2p wrote (suite2p/plane0)",
            path=path,
        )
    return ops


def find_suite2p_plane(path: Path) -> Path:
    """Return the plane folder of a suite2p path (plane folder, root, ``ops.npy``, ``.bin``).

    Parameters
    ----------
    path : Path
        What the user passed.

    Returns
    -------
    Path
        The folder that holds ``ops.npy``.

    Raises
    ------
    InputError
        When a root holds several planes (naming them) or no ``ops.npy`` is found.
    """
    if path.is_file():
        folder = path.parent
    else:
        folder = path
        if not (folder / "ops.npy").is_file():
            planes = sorted(p.parent for p in folder.glob("plane*/ops.npy"))
            if len(planes) == 1:
                return planes[0]
            if planes:
                names = ", ".join(str(p) for p in planes)
                raise InputError(
                    f"holds {len(planes)} suite2p planes ({names}); pass one plane folder",
                    path=path,
                )
    if not (folder / "ops.npy").is_file():
        raise InputError(
            "has no ops.npy beside it, so the frame size is unknown; pass the suite2p plane "
            "folder (suite2p/plane0) that holds both ops.npy and data.bin",
            path=path,
        )
    return folder


class Suite2pReader(SlicedReader):
    """A suite2p registered movie (``int16``, ``nframes x Ly x Lx``), memory-mapped.

    Parameters
    ----------
    path : str or os.PathLike
        A suite2p plane folder (``suite2p/plane0``), a suite2p root with a single plane,
        ``ops.npy``, or ``data.bin`` / ``data_chan2.bin`` with ``ops.npy`` beside it.
    channel : int or None
        1 for ``data.bin`` (the default), 2 for ``data_chan2.bin``.

    Attributes
    ----------
    ops_path : Path
        The ``ops.npy`` read.
    bin_path : Path
        The binary movie read.
    metadata : dict
        ``frame_rate`` (``ops['fs']``, Hz, per plane), ``channel``, ``nchannels``.

    Raises
    ------
    InputError
        When ``ops.npy`` or the binary is missing, or their sizes disagree.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> np.arange(24, dtype="int16").tofile(folder / "data.bin")
    >>> np.save(folder / "ops.npy", {"Ly": 2, "Lx": 3, "nframes": 4, "fs": 30.0})
    >>> with Suite2pReader(folder) as movie:
    ...     movie.shape, movie.read(3, 4)[0, 1].tolist(), movie.metadata["frame_rate"]
    ((4, 2, 3), [21.0, 22.0, 23.0], 30.0)
    """

    def __init__(self, path: str | os.PathLike[str], *, channel: int | None = None) -> None:
        given = Path(path)
        self._args: dict[str, Any] = {"path": given, "channel": channel}
        folder = find_suite2p_plane(given)
        self.ops_path = folder / "ops.npy"
        ops = load_ops(self.ops_path)
        if given.suffix.lower() == ".bin":
            if channel is not None:
                raise InputError(
                    f"--channel {channel} does not apply to a single .bin file; pass the plane "
                    "folder with --channel, or the .bin file of that channel without it",
                    path=given,
                )
            bin_path = given
            channel = 2 if "chan2" in given.name else 1
        else:
            channel = self._check_channel(given, ops, channel)
            bin_path = self._bin_path(folder, ops, channel)
        self.bin_path = bin_path
        self._channel = channel
        try:
            ly, lx = int(ops["Ly"]), int(ops["Lx"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"has no frame size (Ly, Lx); it is not a complete suite2p ops.npy ({err}); "
                "run suite2p's registration again",
                path=self.ops_path,
            ) from err
        if ly < 1 or lx < 1:
            raise InputError(
                f"gives a frame size of {ly} x {lx} pixels; check the file",
                path=self.ops_path,
            )
        size = bin_path.stat().st_size
        frame_bytes = ly * lx * 2
        n_frames = ops.get("nframes")
        if n_frames is None:
            n_frames = size // frame_bytes
        n_frames = int(n_frames)
        if n_frames * frame_bytes > size:
            raise InputError(
                f"is truncated: ops.npy promises {n_frames} frames of {ly} x {lx} int16 "
                f"({n_frames * frame_bytes} bytes) but the file has {size} bytes; copy it again",
                path=bin_path,
            )
        if n_frames * frame_bytes < size:
            logger.warning(
                "%s: %d bytes after the %d frames ops.npy gives are ignored",
                bin_path,
                size - n_frames * frame_bytes,
                n_frames,
            )
        if n_frames == 0:
            raise InputError("holds no frames; run suite2p's registration again", path=bin_path)
        array = np.memmap(bin_path, dtype="<i2", mode="r", shape=(n_frames, ly, lx))
        metadata: dict[str, object] = {"channel": channel, "nchannels": ops.get("nchannels", 1)}
        fs = ops.get("fs")
        if isinstance(fs, (int, float, np.number)) and float(fs) > 0:
            metadata["frame_rate"] = float(fs)
        super().__init__(array, path=bin_path, metadata=metadata)

    @staticmethod
    def _check_channel(path: Path, ops: dict[str, Any], channel: int | None) -> int:
        if channel is None:
            return 1
        if isinstance(channel, bool) or channel not in (1, 2):
            raise InputError(
                f"has no channel {channel!r}; suite2p stores channel 1 (data.bin) and, for "
                "two-channel recordings, channel 2 (data_chan2.bin): pass --channel 1 or 2",
                path=path,
            )
        return int(channel)

    @staticmethod
    def _bin_path(folder: Path, ops: dict[str, Any], channel: int) -> Path:
        key, default = _BIN_NAMES[channel]
        candidates = []
        reg = ops.get(key)
        if isinstance(reg, (str, os.PathLike)) and str(reg):
            reg_path = Path(reg)
            candidates.append(reg_path)
            candidates.append(folder / reg_path.name)  # the same file, moved with its folder
            candidates.append(folder / Path(str(reg).replace("\\", "/")).name)  # from Windows
        candidates.append(folder / default)
        for candidate in candidates:
            if candidate.is_file():
                if candidate != candidates[0]:
                    logger.debug("%s: reading %s instead of %s", folder, candidate, reg)
                return candidate
        which = "" if channel == 1 else " (channel 2)"
        raise InputError(
            f"has no registered movie{which}: neither {reg or default} nor {default} beside "
            "ops.npy exists; run suite2p's registration, or copy the movie into this folder",
            path=folder,
        )

    def _reopen_kwargs(self) -> dict[str, Any]:
        return self._args

    def close(self) -> None:
        """Drop the memory map; later reads fail."""
        super().close()
        self._array = None
