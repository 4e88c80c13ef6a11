"""Read movies from HDF5 files (``.h5``, ``.hdf5``, ``.hdf``) with h5py."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from calmdown.errors import InputError
from calmdown.io.base import (
    SlicedReader,
    describe_found,
    movie_like,
    pick_only_movie,
)

logger = logging.getLogger(__name__)

__all__ = ["HDF5Reader", "plain_metadata"]

#: Attribute names that give the frame rate in Hz, as various pipelines write them.
_FRAME_RATE_KEYS = ("frame_rate", "framerate", "fps", "fs", "sampling_rate", "rate")


def plain_metadata(attrs: Any) -> dict[str, object]:
    """Keep the simple values (numbers, text, short lists) of a mapping of attributes.

    Parameters
    ----------
    attrs : mapping
        HDF5 or zarr attributes.

    Returns
    -------
    dict
        Python scalars, strings and lists; ``frame_rate`` (Hz) set from the first of the
        usual names found.
    """
    out: dict[str, object] = {}
    for name, value in dict(attrs).items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray) and value.size <= 64 and value.dtype.kind in "biufU":
            value = value.tolist()
        if isinstance(value, (str, int, float, bool, list)) or value is None:
            out[str(name)] = value
    for name in _FRAME_RATE_KEYS:
        rate = out.get(name)
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            out.setdefault("frame_rate", float(rate))
            break
    return out


class HDF5Reader(SlicedReader):
    """A movie stored as an HDF5 dataset, read lazily block by block.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    key : str or None
        Path of the dataset in the file (e.g. ``"data"`` or ``"/imaging/raw"``). With None the
        file must hold exactly one dataset of shape ``(T, Y, X)``.

    Raises
    ------
    InputError
        When the file is not HDF5, the dataset is missing or ambiguous, or not a movie.
    """

    def __init__(self, path: str | os.PathLike[str], *, key: str | None = None) -> None:
        path = Path(path)
        self.key: str | None = key
        try:
            self._file = h5py.File(path, "r")
        except OSError as err:
            if "lock" in str(err).lower():
                raise InputError(
                    f"cannot open the HDF5 file ({err}); another program has it open for "
                    "writing; close that program, or set HDF5_USE_FILE_LOCKING=FALSE",
                    path=path,
                ) from err
            raise InputError(
                f"cannot open as an HDF5 file ({err}); the file may be corrupt, truncated or "
                "not HDF5; check the file or convert the movie to TIFF",
                path=path,
            ) from err
        try:
            dataset = self._find(path, key)
            self.key = dataset.name.lstrip("/")
            metadata = plain_metadata(self._file.attrs)
            metadata.update(plain_metadata(dataset.attrs))
            metadata["key"] = self.key
            super().__init__(dataset, path=path, metadata=metadata)
        except BaseException:
            self._file.close()
            raise

    def _find(self, path: Path, key: str | None) -> h5py.Dataset:
        """Return the dataset named `key`, or the only movie-shaped one."""
        found: list[tuple[str, tuple[int, ...]]] = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                found.append((name, tuple(obj.shape)))

        try:
            self._file.visititems(visit)
        except (OSError, RuntimeError, KeyError) as err:
            raise InputError(
                f"cannot list the datasets ({err}); the file may be corrupt or truncated",
                path=path,
            ) from err
        movies = [(name, shape) for name, shape in found if movie_like(shape)]
        if key is not None:
            try:
                obj = self._file[key]
            except (KeyError, ValueError, OSError) as err:
                listing = describe_found(movies) if movies else "none"
                raise InputError(
                    f"has no dataset '{key}'; 3-D datasets in the file: {listing}; "
                    "pass one of them with --key",
                    path=path,
                ) from err
            if not isinstance(obj, h5py.Dataset):
                listing = describe_found(movies) if movies else "none"
                raise InputError(
                    f"'{key}' is a group, not a dataset; 3-D datasets in the file: {listing}; "
                    "pass one of them with --key",
                    path=path,
                )
            return obj
        return self._file[pick_only_movie(found, path, "dataset")]

    def _fetch(self, start: int, stop: int) -> np.ndarray:
        try:
            return super()._fetch(start, stop)
        except (OSError, RuntimeError, ValueError) as err:
            hint = (
                "the dataset uses a compression filter that is not installed; install "
                "hdf5plugin or save it uncompressed"
                if "filter" in str(err).lower()
                else "the file may be truncated or corrupt; check the file"
            )
            raise InputError(
                f"cannot read frames {start}:{stop} of '{self.key}' ({err}); {hint}",
                path=self.path,
            ) from err

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key}

    def close(self) -> None:
        """Close the HDF5 file."""
        super().close()
        self._file.close()
