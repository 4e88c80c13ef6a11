"""Read movies from zarr stores (``.zarr`` directories, zarr format 2 or 3)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from calmdown.errors import InputError
from calmdown.io.base import (
    SlicedReader,
    describe_found,
    movie_like,
    pick_only_movie,
)
from calmdown.io.hdf5 import plain_metadata

logger = logging.getLogger(__name__)

__all__ = ["ZarrReader"]


def _arrays(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """All arrays under `group`, depth first, as ``(path, array)``."""
    out: list[tuple[str, Any]] = []
    for name, array in sorted(group.arrays(), key=lambda item: item[0]):
        out.append((f"{prefix}{name}", array))
    for name, sub in sorted(group.groups(), key=lambda item: item[0]):
        out.extend(_arrays(sub, f"{prefix}{name}/"))
    return out


class ZarrReader(SlicedReader):
    """A movie stored as a zarr array, read lazily chunk by chunk.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.zarr`` directory: an array at its root, or a group.
    key : str or None
        Path of the array inside a group (e.g. ``"0"`` or ``"raw/data"``). With None, a group
        must hold exactly one array of shape ``(T, Y, X)``.

    Raises
    ------
    InputError
        When the directory is not a zarr store, the array is missing or ambiguous, or not
        a movie.
    """

    def __init__(self, path: str | os.PathLike[str], *, key: str | None = None) -> None:
        path = Path(path)
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as err:  # zarr raises many types for a bad store
            raise InputError(
                f"cannot open as a zarr store ({type(err).__name__}: {err}); check that the "
                "directory holds zarr metadata (.zarray/.zgroup or zarr.json)",
                path=path,
            ) from err
        array = self._find(path, node, key)
        self.key: str | None = key
        metadata = plain_metadata(getattr(node, "attrs", {}))
        if array is not node:
            metadata.update(plain_metadata(array.attrs))
        if key is not None:
            metadata["key"] = key
        super().__init__(array, path=path, metadata=metadata)

    @staticmethod
    def _find(path: Path, node: Any, key: str | None) -> Any:
        if not hasattr(node, "arrays"):  # an array at the root
            if key is not None:
                raise InputError(
                    f"is a single zarr array, so --key '{key}' does not apply; leave --key out",
                    path=path,
                )
            return node
        try:
            found = _arrays(node)
        except Exception as err:  # corrupt metadata deep in the hierarchy
            raise InputError(
                f"cannot list the arrays of the zarr group ({type(err).__name__}: {err}); "
                "the store may be corrupt",
                path=path,
            ) from err
        movies = [
            (name, tuple(array.shape)) for name, array in found if movie_like(tuple(array.shape))
        ]
        if key is not None:
            for name, array in found:
                if name == key.strip("/"):
                    return array
            listing = describe_found(movies) if movies else "none"
            raise InputError(
                f"has no array '{key}'; 3-D arrays in the store: {listing}; pass one of them "
                "with --key",
                path=path,
            )
        shapes = [(name, tuple(array.shape)) for name, array in found]
        return dict(found)[pick_only_movie(shapes, path, "array")]

    def _fetch(self, start: int, stop: int) -> np.ndarray:
        try:
            return super()._fetch(start, stop)
        except Exception as err:  # missing or corrupt chunks, unknown codecs
            raise InputError(
                f"cannot read frames {start}:{stop} ({type(err).__name__}: {err}); the store "
                "may be incomplete or use a codec that is not installed",
                path=self.path,
            ) from err

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key}
