"""OME-Zarr images: full resolution without --key, axes from the metadata, the frame rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from calmdown.errors import InputError
from calmdown.io import open_movie


def write_ome(path: Path, movie: np.ndarray, axes: list[dict], scale: list[float], nested: bool):
    """Write `movie` and a 2x downsampled level as an OME-Zarr image (0.4, or 0.5 if nested)."""
    root = zarr.open_group(str(path), mode="w")
    small = movie[..., ::2, ::2]
    for name, level in (("0", movie), ("1", small)):
        array = root.create_array(name, shape=level.shape, dtype=level.dtype)
        array[...] = level
    half = [*scale[:-2], scale[-2] * 2, scale[-1] * 2]
    multiscale = {
        "version": "0.4",
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": half}]},
        ],
    }
    if nested:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        root.attrs["multiscales"] = [multiscale]


TYX = [
    {"name": "t", "type": "time", "unit": "millisecond"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


@pytest.mark.parametrize("nested", [False, True])
def test_full_resolution_and_frame_rate_without_key(tmp_path: Path, nested: bool) -> None:
    movie = np.arange(6 * 8 * 10, dtype=np.uint16).reshape(6, 8, 10)
    path = tmp_path / "image.ome.zarr"
    write_ome(path, movie, TYX, [33.3, 0.5, 0.5], nested)
    with open_movie(path) as reader:
        assert reader.shape == (6, 8, 10)
        np.testing.assert_array_equal(reader.read(0, 6), movie)
        assert reader.metadata["frame_rate"] == pytest.approx(1000 / 33.3)
        assert reader.metadata["key"] == "0"
    with open_movie(path, key="1") as reader:  # another level, asked for
        assert reader.shape == (6, 4, 5)


def test_tczyx_with_one_channel_and_plane(tmp_path: Path) -> None:
    movie = np.random.default_rng(0).integers(0, 500, (5, 1, 1, 8, 8)).astype(np.uint16)
    axes = [{"name": n} for n in "tczyx"]
    path = tmp_path / "five.ome.zarr"
    write_ome(path, movie, axes, [1.0, 1.0, 1.0, 1.0, 1.0], nested=False)
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 5), movie[:, 0, 0])
        assert "frame_rate" not in reader.metadata  # no time unit given


def test_several_channels_are_named_by_their_axes(tmp_path: Path) -> None:
    movie = np.zeros((5, 2, 1, 8, 8), np.uint16)
    path = tmp_path / "two.ome.zarr"
    write_ome(path, movie, [{"name": n} for n in "tczyx"], [1.0] * 5, nested=False)
    with pytest.raises(InputError, match=r"axes TCZYX"):
        open_movie(path)
