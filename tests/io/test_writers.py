"""Writers: round trips, atomic commit and abort, refusals, and naming of extra outputs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from calmdown.errors import InputError
from calmdown.io import MovieWriter, open_movie, open_writer, output_paths_like, save_array
from calmdown.io.write import BIGTIFF_BYTES, output_dtype, round_for_output

SUFFIXES = [".tif", ".h5", ".zarr", ".npy"]


def make_movie(dtype: str, shape: tuple[int, int, int] = (11, 5, 6)) -> np.ndarray:
    rng = np.random.default_rng(1)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0.0, 50.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_in_blocks(tmp_path: Path, suffix: str, dtype: str) -> None:
    movie = make_movie(dtype)
    path = tmp_path / f"out{suffix}"
    with MovieWriter(path, movie.shape, dtype=dtype, metadata={"frame_rate": 15.0}) as writer:
        assert writer.partial.exists()
        assert not path.exists()
        for start in range(0, len(movie), 4):  # blocks of 4, 4, 3
            writer.write(start, movie[start : start + 4])
    assert leftovers(tmp_path) == [path.name]
    with open_movie(path) as reader:
        assert reader.shape == movie.shape
        assert reader.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(reader.read(0, len(movie)), movie.astype(np.float32))
        if suffix != ".npy":
            assert reader.metadata["frame_rate"] == 15.0


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_save_array_and_formats_on_disk(tmp_path: Path, suffix: str) -> None:
    movie = make_movie("uint16")
    path = save_array(tmp_path / f"whole{suffix}", movie)
    assert path == tmp_path / f"whole{suffix}"
    if suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            assert (series.shape, series.axes) == (movie.shape, "TYX")
            assert len(tif.series) == 1
            assert not tif.is_bigtiff
            assert series.dataoffset is not None  # contiguous: readers can memory-map it
            np.testing.assert_array_equal(series.asarray(), movie)
    elif suffix == ".h5":
        with h5py.File(path, "r") as f:
            assert f["data"].chunks == (11, 5, 6)
            np.testing.assert_array_equal(f["data"][()], movie)
    elif suffix == ".zarr":
        z = zarr.open_array(str(path), mode="r")
        np.testing.assert_array_equal(z[:], movie)
    else:
        np.testing.assert_array_equal(np.load(path), movie)


def test_hdf5_key_and_any_order_blocks(tmp_path: Path) -> None:
    movie = make_movie("float32")
    path = tmp_path / "out.hdf5"
    with open_writer(path, movie.shape, key="results/mean") as writer:
        writer.write(6, movie[6:])
        writer.write(0, movie[:6])
    with open_movie(path, key="results/mean") as reader:
        np.testing.assert_array_equal(reader.read(0, 11), movie)


def test_tiff_blocks_must_come_in_order(tmp_path: Path) -> None:
    writer = MovieWriter(tmp_path / "out.tif", (4, 3, 3))
    with pytest.raises(ValueError, match="in order"):
        writer.write(2, np.zeros((2, 3, 3)))
    writer.abort()
    assert leftovers(tmp_path) == []


def test_block_shape_is_checked(tmp_path: Path) -> None:
    with MovieWriter(tmp_path / "out.npy", (4, 3, 3)) as writer:
        with pytest.raises(ValueError, match="does not fit"):
            writer.write(0, np.zeros((2, 3, 4)))
        with pytest.raises(ValueError, match="out of range"):
            writer.write(3, np.zeros((2, 3, 3)))
        writer.write(0, np.zeros((4, 3, 3)))


def test_bigtiff_chosen_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("calmdown.io.write.BIGTIFF_BYTES", 100)
    assert BIGTIFF_BYTES == 2**31 - 2**25
    movie = make_movie("uint16")
    path = save_array(tmp_path / "big.tif", movie)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 11), movie)


def test_float_to_integer_rounds_and_clips(tmp_path: Path) -> None:
    data = np.array([-3.0, 0.4, 1.6, 70000.0]).reshape(4, 1, 1).astype("f4")
    with pytest.warns(UserWarning, match=r"out\.tif.*clipped"):
        path = save_array(tmp_path / "out.tif", data, dtype="uint16")
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 4).ravel(), [0, 0, 2, 65535])


def test_output_dtype_choices() -> None:
    assert output_dtype("input", "uint16") == np.uint16
    assert output_dtype("input", np.int16) == np.int16
    assert output_dtype("input", "float64") == np.float32  # a float input: float32
    assert output_dtype("int16", "uint16") == np.int16
    with pytest.raises(InputError, match="float32, input, uint16, int16"):
        output_dtype("float64", "uint16")


def test_interval_ends_round_outward_for_integer_outputs() -> None:
    x = np.array([1.2, 1.5, 1.8, -0.5])
    np.testing.assert_array_equal(round_for_output("lower", x, np.uint16), [1, 1, 1, -1])
    np.testing.assert_array_equal(round_for_output("upper", x, np.uint16), [2, 2, 2, -0.0])
    np.testing.assert_array_equal(round_for_output("denoised", x, np.int16), [1, 2, 2, -0.0])
    assert round_for_output("lower", x, np.float32) is x  # floats stored as they are


def test_commit_twice_overwrites_atomically(tmp_path: Path) -> None:
    for suffix in SUFFIXES:
        path = tmp_path / f"again{suffix}"
        save_array(path, np.zeros((3, 4, 4), "f4"))
        save_array(path, np.ones((5, 4, 4), "f4"))
        with open_movie(path) as reader:
            assert reader.shape == (5, 4, 4)
            np.testing.assert_array_equal(reader.read(0, 5), 1.0)
    assert leftovers(tmp_path) == sorted(f"again{s}" for s in SUFFIXES)


def test_existing_output_kept_until_commit(tmp_path: Path) -> None:
    path = save_array(tmp_path / "keep.h5", np.zeros((3, 4, 4), "f4"))
    writer = MovieWriter(path, (3, 4, 4))
    writer.write(0, np.ones((3, 4, 4)))
    with open_movie(path) as reader:  # the old file is intact while the new one is written
        np.testing.assert_array_equal(reader.read(0, 3), 0.0)
    writer.commit()
    assert writer.commit() == path  # a second commit is harmless
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 3), 1.0)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_abort_leaves_nothing(tmp_path: Path, suffix: str) -> None:
    writer = MovieWriter(tmp_path / f"out{suffix}", (4, 3, 3))
    writer.write(0, np.zeros((2, 3, 3)))
    writer.abort()
    writer.abort()
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        writer.write(2, np.zeros((2, 3, 3)))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_exception_inside_with_leaves_no_output(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    with pytest.raises(RuntimeError, match="boom"), MovieWriter(path, (4, 3, 3)) as writer:
        writer.write(0, np.zeros((2, 3, 3)))
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_exception_inside_with_keeps_old_output(tmp_path: Path) -> None:
    path = save_array(tmp_path / "old.zarr", np.zeros((3, 4, 4), "f4"))
    with pytest.raises(RuntimeError), MovieWriter(path, (3, 4, 4)) as writer:
        writer.write(0, np.ones((1, 4, 4)))
        raise RuntimeError
    assert leftovers(tmp_path) == ["old.zarr"]
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 3), 0.0)


def test_commit_with_missing_frames(tmp_path: Path) -> None:
    writer = MovieWriter(tmp_path / "out.h5", (4, 3, 3))
    writer.write(0, np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="1 of 4 frames were never written"):
        writer.commit()
    assert leftovers(tmp_path) == []


def test_disk_failure_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "full.tif"
    writer = MovieWriter(path, (4, 3, 3))

    def no_space(start: int, block: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer._backend, "write", no_space)
    with pytest.raises(InputError, match=r"full\.tif: writing failed.*No space left.*free"):
        writer.write(0, np.zeros((2, 3, 3)))
    assert leftovers(tmp_path) == []


# refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_output_equal_to_input(tmp_path: Path, suffix: str) -> None:
    source = save_array(tmp_path / f"in{suffix}", np.zeros((3, 4, 4), "u2"))
    alias = tmp_path / "sub" / ".." / f"in{suffix}"
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match=rf"in\{suffix}: would overwrite the input.*another"):
        MovieWriter(alias, (3, 4, 4), inputs=[source])
    assert leftovers(tmp_path) == sorted([f"in{suffix}", "sub"])


def test_unknown_output_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"out\.avi.*'\.avi'.*\.tif.*\.h5.*\.zarr.*\.npy"):
        MovieWriter(tmp_path / "out.avi", (3, 4, 4))


def test_missing_output_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "out.tif"
    with pytest.raises(InputError, match=r"out\.tif: cannot write to .*nowhere.*writable location"):
        MovieWriter(path, (3, 4, 4))
    with pytest.raises(InputError, match="writable location"):
        save_array(path, np.zeros((3, 4, 4)))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_directory(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match=r"cannot write to .*ro.*writable location"):
            MovieWriter(folder / "out.h5", (3, 4, 4))
    finally:
        folder.chmod(0o700)


def test_no_overwrite(tmp_path: Path) -> None:
    path = save_array(tmp_path / "exists.npy", np.zeros((3, 4, 4)))
    with pytest.raises(InputError, match=r"exists\.npy: already exists; pass --overwrite"):
        MovieWriter(path, (3, 4, 4), overwrite=False)


def test_bad_output_dtype(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"out\.tif.*complex64.*float32 or uint16"):
        MovieWriter(tmp_path / "out.tif", (3, 4, 4), dtype="complex64")


def test_save_array_rejects_non_movies(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="single 2-D image"):
        save_array(tmp_path / "out.tif", np.zeros((4, 4)))
    assert leftovers(tmp_path) == []


def test_output_paths_like() -> None:
    assert output_paths_like("out.tif", ["lower", "upper"]) == [
        Path("out.lower.tif"),
        Path("out.upper.tif"),
    ]
    assert output_paths_like(Path("/data/run.1/den.zarr"), ["sd"]) == [
        Path("/data/run.1/den.sd.zarr")
    ]
    assert output_paths_like("noext", ["a"]) == [Path("noext.a")]
    with pytest.raises(ValueError, match="non-empty"):
        output_paths_like("out.tif", ["a/b"])
