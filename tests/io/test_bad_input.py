"""Bad input at the reader level: non-finite values, axes to choose, options that do not apply."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from calmdown.errors import InputError
from calmdown.io import open_movie


def grid(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)


@pytest.mark.parametrize("suffix", [".tif", ".h5", ".npy"])
def test_nan_and_inf_are_counted_and_located(tmp_path: Path, suffix: str) -> None:
    data = np.ones((10, 6, 5), np.float32)
    data[4, 2, 3] = np.nan
    data[4, 5, 0] = np.inf
    data[6, 0, 0] = -np.inf
    path = tmp_path / f"bad{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, data)
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["data"] = data
    else:
        np.save(path, data)
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), data[:4])  # good frames still read
        with pytest.raises(
            InputError,
            match=rf"bad\{suffix}: frames 0:10 hold 3 NaN or infinite values \(the first at "
            r"frame 4, row 2, column 3.*replace them",
        ):
            reader.read(0, 10)
    with pytest.raises(InputError, match=r"hold 1 NaN or infinite value \("):
        open_movie(data).read(6, 7)


def test_float64_beyond_float32_is_refused(tmp_path: Path) -> None:
    data = np.ones((8, 4, 4))
    data[2, 1, 1] = 1e300
    path = tmp_path / "huge.npy"
    np.save(path, data)
    with pytest.raises(InputError, match=r"huge\.npy: .*1 NaN or infinite value.*float32's range"):
        open_movie(path).read(0, 8)


def test_four_d_without_time_axis(tmp_path: Path) -> None:
    path = tmp_path / "four.npy"
    np.save(path, np.zeros((10, 3, 16, 16), np.uint16))
    with pytest.raises(InputError, match=r"four\.npy.*4-D.*\(10, 3, 16, 16\).*T, Y, X.*channel"):
        open_movie(path)
    with pytest.raises(InputError, match=r"four\.npy: --channel 1 does not apply to a NPY file"):
        open_movie(path, channel=1)
    np.save(path, np.zeros((10, 1, 16, 16), np.uint16))  # a singleton axis is fine
    with open_movie(path) as reader:
        assert reader.shape == (10, 16, 16)


def test_tiff_hyperstack_channel_and_plane(tmp_path: Path) -> None:
    data = grid((4, 3, 2, 5, 6))  # T, Z, C, Y, X as ImageJ orders them
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(InputError, match=r"hyper\.tif.*TZCYX.*--channel 1 to 2 and --plane 1 to 3"):
        open_movie(path)
    with open_movie(path, channel=2, plane=3) as reader:
        assert reader.shape == (4, 5, 6)
        np.testing.assert_array_equal(reader.read(0, 4), data[:, 2, 1].astype(np.float32))
        assert reader.metadata["channel"] == 2 and reader.metadata["planes"] == 3
        copy = pickle.loads(pickle.dumps(reader))
        np.testing.assert_array_equal(copy.read(1, 2), reader.read(1, 2))
        copy.close()
    with pytest.raises(InputError, match=r"has no channel 3.*--channel 1 to 2"):
        open_movie(path, channel=3, plane=1)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, grid((4, 5, 6)), photometric="minisblack", metadata={"axes": "TYX"})
    with pytest.raises(InputError, match=r"plain\.tif: has no plane axis \(Z\).*leave --plane out"):
        open_movie(plain, plane=1)


def test_picks_refused_for_arrays() -> None:
    with pytest.raises(InputError, match=r"--plane 2 does not apply to an in-memory array"):
        open_movie(np.zeros((5, 4, 4)), plane=2)
    reader = open_movie(np.zeros((5, 4, 4)))
    with pytest.raises(InputError, match=r"--channel 1 does not apply to an open movie"):
        open_movie(reader, channel=1)


def test_folder_that_is_neither_zarr_nor_suite2p(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    with pytest.raises(InputError, match=r"frames: is a folder; calmdown reads .*suite2p"):
        open_movie(folder)
