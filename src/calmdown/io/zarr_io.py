"""Read movies from zarr stores (``.zarr`` directories, zarr format 2 or 3), OME-Zarr included.

An OME-Zarr image (a group whose attributes hold ``multiscales``, at the top level as in
OME-NGFF 0.4 or under ``ome`` as in 0.5) is read at full resolution: the first dataset of its
first multiscale, without ``--key``. Its axes name the dimensions (``t``, ``c``, ``z``, ``y``,
``x``; axes of length 1 are dropped), and a time scale in seconds or milliseconds gives the
frame rate.
"""

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


def _multiscale(node: Any) -> dict[str, Any] | None:
    """Return the first OME-Zarr multiscale of a group, or None for other stores."""
    attrs = getattr(node, "attrs", None)
    if attrs is None or not hasattr(node, "arrays"):
        return None
    scales = attrs.get("multiscales")
    if scales is None and isinstance(attrs.get("ome"), dict):
        scales = attrs["ome"].get("multiscales")
    if isinstance(scales, list) and scales and isinstance(scales[0], dict):
        return scales[0]
    return None


def _ome_dataset(path: Path, multiscale: dict[str, Any]) -> str:
    """Return the path of the full-resolution array of an OME-Zarr multiscale."""
    datasets = multiscale.get("datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
        name = datasets[0].get("path")
        if isinstance(name, str) and name:
            return name
    raise InputError(
        "is an OME-Zarr image whose multiscales metadata names no dataset; pass the array "
        "with --key (e.g. --key 0)",
        path=path,
    )


def _ome_axes(multiscale: dict[str, Any], ndim: int) -> tuple[str | None, float | None]:
    """Return the axis letters (e.g. ``"TCZYX"``) and the frame rate an OME multiscale gives."""
    names = []
    for axis in multiscale.get("axes") or []:
        name = axis.get("name") if isinstance(axis, dict) else axis
        names.append(str(name).upper() if name is not None else "?")
    if len(names) != ndim:
        return None, None
    rate = None
    axis_t = names.index("T") if "T" in names else None
    datasets = multiscale.get("datasets") or [{}]
    for transform in datasets[0].get("coordinateTransformations") or []:
        scale = transform.get("scale") if isinstance(transform, dict) else None
        if axis_t is None or not isinstance(scale, list) or len(scale) != ndim:
            continue
        unit = multiscale["axes"][axis_t]
        unit = unit.get("unit") if isinstance(unit, dict) else None
        per_second = {"second": 1.0, "millisecond": 1e-3}.get(str(unit))
        step = float(scale[axis_t])
        if per_second is not None and step > 0:
            rate = 1.0 / (step * per_second)
    return "".join(names), rate


class ZarrReader(SlicedReader):
    """A movie stored as a zarr array, read lazily chunk by chunk.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.zarr`` directory: an array at its root, or a group (an OME-Zarr image is read
        at full resolution).
    key : str or None
        Path of the array inside a group (e.g. ``"0"`` or ``"raw/data"``). With None, a group
        must hold exactly one array of shape ``(T, Y, X)``, or be an OME-Zarr image.

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
        ome = _multiscale(node) if key is None else None
        if ome is not None:
            key = _ome_dataset(path, ome)
        array = self._find(path, node, key)
        self.key: str | None = key
        metadata = plain_metadata(getattr(node, "attrs", {}))
        if array is not node:
            metadata.update(plain_metadata(array.attrs))
        if key is not None:
            metadata["key"] = key
        axes = None
        if ome is not None:
            axes, rate = _ome_axes(ome, len(array.shape))
            metadata["ome_zarr"] = True
            if rate is not None:
                metadata["frame_rate"] = rate
        super().__init__(array, path=path, metadata=metadata, axes=axes)

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
