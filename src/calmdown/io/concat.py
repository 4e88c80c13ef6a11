"""Read an acquisition split over several files as one movie, concatenated in time.

ScanImage (and other acquisition software) splits a long recording into numbered files,
``name_00001.tif``, ``name_00002.tif``, ... :func:`calmdown.io.open_movie` reads them as one
movie when given

* a folder whose TIFF files share a name and differ only in a trailing number (other files,
  such as notes or ``.json`` settings, are ignored), or
* a glob pattern such as ``"rec/name_*.tif"`` (quoted on the command line, so that the shell
  does not expand it), which may match files of any format calmdown reads.

The files are ordered by their numbers (``name_2`` before ``name_10``), opened with the same
key, channel and plane, and must agree on the frame size ``(Y, X)``, the data type and the
channel and plane layout. Each file must hold whole volumes (ScanImage splits files at volume
boundaries).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import READ_FORMATS, MovieReader, ReaderBase

logger = logging.getLogger(__name__)

__all__ = ["ConcatReader", "has_glob", "multi_file_parts"]

_TIFF = (".tif", ".tiff", ".btf")
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)$")


def has_glob(source: str | os.PathLike[str]) -> bool:
    """Whether `source` is a glob pattern (holds ``*``, ``?`` or ``[``)."""
    return glob.has_magic(os.fspath(source))


def _natural_key(path: Path) -> list[Any]:
    """Sort key that orders the numbers in a name by value (``a_2`` before ``a_10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _numbered(path: Path) -> tuple[str, int] | None:
    """Return ``(stem, number)`` for ``stem<number>.tif``, or None without a trailing number."""
    name = path.name
    stem = name[: -len(path.suffix)] if path.suffix else name
    match = _NUMBERED.match(stem)
    if match is None:
        return None
    return match.group("stem") + path.suffix.lower(), int(match.group("number"))


def _warn_gaps(numbers: list[int], where: Path) -> None:
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        shown = ", ".join(str(n) for n in missing[:10]) + (" ..." if len(missing) > 10 else "")
        warnings.warn(
            f"{where}: the numbered files skip number(s) {shown}; the movie jumps in time "
            "there (add the missing files if they exist)",
            stacklevel=4,
        )


def multi_file_parts(source: str | os.PathLike[str]) -> list[Path] | None:
    """Find the files of an acquisition split over several files, in time order.

    Parameters
    ----------
    source : str or os.PathLike
        A folder of numbered TIFF files (``name_00001.tif``, ``name_00002.tif``, ...), or a
        glob pattern (``"rec/name_*.tif"``).

    Returns
    -------
    list of Path or None
        The files, ordered by their numbers; None when `source` is neither a glob pattern
        that matches nothing existing under that exact name, nor a folder holding TIFF files
        (the caller then treats it as a single file or folder).

    Raises
    ------
    InputError
        When a pattern matches no readable file, or a folder holds TIFF files that are not
        numbered parts of one recording (no trailing number, several recordings, or single
        images); the message names the folder or pattern and the fix.
    """
    path = Path(source).expanduser()
    if has_glob(source) and not path.exists():
        matches = [
            Path(p)
            for p in glob.glob(os.fspath(path))
            if Path(p).suffix.lower() in READ_FORMATS
            and (Path(p).is_file() or Path(p).suffix.lower() == ".zarr")
        ]
        if not matches:
            raise InputError(
                "the pattern matches no movie file; check the folder and the pattern (quote it "
                "on the command line so that the shell does not expand it)",
                path=path,
            )
        parts = sorted(matches, key=_natural_key)
        numbered = [_numbered(p) for p in parts]
        if all(n is not None for n in numbered) and len({n[0] for n in numbered if n}) == 1:
            _warn_gaps([n[1] for n in numbered if n], path)
        return parts
    if not path.is_dir():
        return None
    tiffs = [
        p
        for p in path.iterdir()
        if p.suffix.lower() in _TIFF and p.is_file() and not p.name.startswith(".")
    ]
    if not tiffs:
        return None
    groups: dict[str, list[tuple[int, Path]]] = {}
    unnumbered = []
    for p in tiffs:
        found = _numbered(p)
        if found is None:
            unnumbered.append(p.name)
        else:
            groups.setdefault(found[0], []).append((found[1], p))
    if unnumbered:
        shown = ", ".join(sorted(unnumbered)[:5])
        raise InputError(
            f"is a folder of TIFF files, but {shown} {'has' if len(unnumbered) == 1 else 'have'} "
            "no trailing number; calmdown reads a folder as one recording split into numbered "
            "files (name_00001.tif, name_00002.tif, ...): pass a single file, or a quoted "
            "pattern such as 'folder/name_*.tif'",
            path=path,
        )
    if len(groups) > 1:
        stems = sorted(groups)
        examples = ", ".join(f"{s[: -len(Path(s).suffix)]}*{Path(s).suffix}" for s in stems[:5])
        raise InputError(
            f"holds the numbered TIFF files of {len(groups)} recordings ({examples}); pass one "
            f"of them as a quoted pattern, e.g. '{path / examples.split(', ')[0]}'",
            path=path,
        )
    numbered_parts = sorted(next(iter(groups.values())))
    _warn_gaps([n for n, _ in numbered_parts], path)
    return [p for _, p in numbered_parts]


def _single_images(parts: Sequence[Path], where: Path) -> None:
    """Refuse a folder of single-image TIFFs (one frame per file) with a clear message."""
    import tifffile

    first = parts[0]
    if first.suffix.lower() not in _TIFF:
        return
    try:
        with tifffile.TiffFile(first) as tif:
            single = len(tif.pages) == 1 and tif.pages.first.ndim == 2
    except Exception:  # noqa: BLE001 -- the reader reports unreadable files itself
        return
    if single:
        raise InputError(
            f"holds single-image TIFF files ({first.name}, ...: one frame per file); calmdown "
            "reads numbered multi-frame parts of one recording; combine the frames into one "
            "multi-page TIFF first",
            path=where,
        )


def _layout(reader: MovieReader) -> tuple[Any, ...]:
    meta = reader.metadata
    return tuple(meta.get(name) for name in ("channels", "planes", "channel", "plane"))


class ConcatReader(ReaderBase):
    """Several movie files read as one ``(T, Y, X)`` movie, concatenated in time.

    Parameters
    ----------
    parts : sequence of path-like
        The files, in time order (see :func:`multi_file_parts`).
    key : str or None
        Dataset, array or series inside each file (as for :func:`calmdown.io.open_movie`).
    channel : int or None
        The channel read from each file.
    plane : int or None
        The plane read from each file.
    roi : int or None
        The ROI read from each file (ScanImage multi-ROI recordings).
    source : path-like or None
        What the user named (the folder or the pattern), used as :attr:`path` in messages;
        the first file if None.

    Attributes
    ----------
    metadata : dict
        The first file's, plus ``files`` (every part, as text) and ``frames_per_file``.
    readers : list of MovieReader
        One per part.

    Raises
    ------
    InputError
        When a part cannot be read, or does not match the first one in frame size, data type,
        or channel and plane layout (naming the part), or a part other than the last ends
        mid-volume.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> for i in (1, 2):
    ...     name = os.path.join(folder, f"rec_0000{i}.tif")
    ...     tifffile.imwrite(name, np.full((3, 4, 4), i, "u2"), photometric="minisblack")
    >>> from calmdown.io import open_movie
    >>> with open_movie(folder) as movie:
    ...     movie.shape, movie.read(2, 4)[:, 0, 0].tolist()
    ((6, 4, 4), [1.0, 2.0])
    """

    def __init__(
        self,
        parts: Sequence[str | os.PathLike[str]],
        *,
        key: str | None = None,
        channel: int | None = None,
        plane: int | None = None,
        roi: int | None = None,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        from calmdown.io import open_movie

        paths = [Path(p) for p in parts]
        if not paths:
            raise InputError("no files to read", path=source)
        self.path = Path(source) if source is not None else paths[0]
        self._args: dict[str, Any] = {
            "parts": tuple(paths),
            "key": key,
            "channel": channel,
            "plane": plane,
            "roi": roi,
            "source": source,
        }
        _single_images(paths, self.path)
        self.readers: list[MovieReader] = []
        try:
            for i, part in enumerate(paths):
                reader = open_movie(part, key=key, channel=channel, plane=plane, roi=roi)
                self.readers.append(reader)
                if i == 0:
                    continue
                self._check_match(self.readers[0], reader, paths[0], part)
            for part, reader in zip(paths[:-1], self.readers[:-1], strict=True):
                unused = int(getattr(reader, "unused_pages", 0) or 0)
                if unused:
                    raise InputError(
                        f"ends mid-volume ({unused} pages after its last complete volume), but "
                        "it is not the last file of the recording, so the channels and planes "
                        "of the next file would be mixed up; calmdown needs files split at "
                        "volume boundaries (ScanImage's default)",
                        path=part,
                    )
        except BaseException:
            self.close()
            raise
        first = self.readers[0]
        lengths = [r.shape[0] for r in self.readers]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
        _, y, x = first.shape
        self.shape = (int(self._starts[-1]), y, x)
        self.dtype = np.dtype(first.dtype)
        self.metadata = dict(first.metadata)
        self.metadata["files"] = [str(p) for p in paths]
        self.metadata["frames_per_file"] = lengths
        logger.debug("%s: %d files, %d frames in all", self.path, len(paths), self.shape[0])

    @staticmethod
    def _check_match(first: MovieReader, reader: MovieReader, first_path: Path, part: Path) -> None:
        if reader.shape[1:] != first.shape[1:]:
            raise InputError(
                f"has frames of {reader.shape[1]} x {reader.shape[2]} pixels, but the first "
                f"file, {first_path.name}, has {first.shape[1]} x {first.shape[2]}; all files "
                "of a recording must have the same frame size: leave this file out (choose "
                "the files with a pattern) or pass the files one by one",
                path=part,
            )
        if np.dtype(reader.dtype) != np.dtype(first.dtype):
            raise InputError(
                f"stores {np.dtype(reader.dtype)}, but the first file, {first_path.name}, "
                f"stores {np.dtype(first.dtype)}; all files of a recording must have the same "
                "data type: leave this file out or convert it",
                path=part,
            )
        if _layout(reader) != _layout(first) or type(reader) is not type(first):
            raise InputError(
                "has another channel and plane layout (or file type) than the first file, "
                f"{first_path.name}: {_layout(reader)} against {_layout(first)} (channels, "
                "planes, channel, plane); all files of a recording must be saved with the same "
                "settings: leave this file out",
                path=part,
            )

    def _repr_fields(self) -> str:
        return f"files={len(self.readers)}"

    def skip_value_check(self) -> None:
        """As :meth:`ReaderBase.skip_value_check`, for every file."""
        super().skip_value_check()
        for reader in self.readers:
            reader.skip_value_check()

    def _reopen_kwargs(self) -> dict[str, Any]:
        return self._args

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Read across file boundaries; an InputError names the file and its own frame numbers."""
        _, y, x = self.shape
        out = np.empty((stop - start, y, x), dtype=np.float32)
        i = max(0, bisect_right(self._starts, start) - 1)
        pos = start
        while pos < stop:
            first, last = self._starts[i], self._starts[i + 1]
            end = min(stop, last)
            if end > pos:
                out[pos - start : end - start] = self.readers[i].read(pos - first, end - first)
            pos = end
            i += 1
        return out

    def close(self) -> None:
        """Close every file; reading afterwards raises ValueError."""
        super().close()
        for reader in self.readers:
            reader.close()
