"""Readers: round trips through every format, TIFF layouts, and errors on bad files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from calmdown.errors import InputError
from calmdown.io import ArrayReader, MovieReader, open_movie

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
DTYPES = ["uint16", "int16", "float32"]


def make_movie(dtype: str, shape: tuple[int, int, int] = (7, 5, 6)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100.0, 20.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def save(path: Path, movie: np.ndarray) -> Path:
    """Write `movie` with the format's own library (not calmdown's writer)."""
    suffix = path.suffix
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, movie, photometric="minisblack", metadata={"axes": "TYX"})
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["data"] = movie
    elif suffix == ".zarr":
        z = zarr.open_array(
            store=str(path), mode="w", shape=movie.shape, chunks=(3, 5, 6), dtype=movie.dtype
        )
        z[:] = movie
    elif suffix == ".npy":
        np.save(path, movie)
    return path


def check_reader(reader: MovieReader, movie: np.ndarray) -> None:
    t, y, x = movie.shape
    assert isinstance(reader, MovieReader)
    assert reader.shape == movie.shape
    assert len(reader) == t
    assert reader.dtype == movie.dtype
    whole = reader.read(0, t)
    assert whole.dtype == np.float32
    np.testing.assert_array_equal(whole, movie.astype(np.float32))
    np.testing.assert_array_equal(reader.read(0, 1), movie[:1].astype(np.float32))
    np.testing.assert_array_equal(reader.read(t - 2, t), movie[t - 2 :].astype(np.float32))
    np.testing.assert_array_equal(reader.read(2, 5), movie[2:5].astype(np.float32))
    assert reader.read(t, t).shape == (0, y, x)
    with pytest.raises(ValueError, match="out of range"):
        reader.read(0, t + 1)
    with pytest.raises(ValueError, match="out of range"):
        reader.read(3, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", [".tif", ".h5", ".zarr", ".npy"])
def test_round_trip_each_format(tmp_path: Path, suffix: str, dtype: str) -> None:
    movie = make_movie(dtype)
    path = save(tmp_path / f"movie{suffix}", movie)
    with open_movie(path) as reader:
        assert reader.path == path
        check_reader(reader, movie)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_formats_and_groups(tmp_path: Path, zarr_format: int) -> None:
    movie = make_movie("uint16")
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("mean", shape=(5, 6), dtype="f4")
    group.create_array("raw/data", shape=movie.shape, dtype=movie.dtype)[:] = movie
    with open_movie(path) as reader:
        check_reader(reader, movie)
    with open_movie(path, key="raw/data") as reader:
        check_reader(reader, movie)
    group.create_array("other", shape=movie.shape, dtype="f4")
    with pytest.raises(InputError, match=r"group\.zarr.*'other'.*'raw/data'.*--key"):
        open_movie(path)
    with pytest.raises(InputError, match="no array 'nope'"):
        open_movie(path, key="nope")


def test_array_reader_copies_and_squeezes() -> None:
    movie = make_movie("float32")
    reader = open_movie(movie)
    assert isinstance(reader, ArrayReader)
    assert reader.path is None
    check_reader(reader, movie)
    block = reader.read(0, 2)
    block[:] = -1
    assert movie[0, 0, 0] != -1  # reads are copies, never views of the caller's array
    assert open_movie(reader) is reader
    lazy = zarr.array(movie, chunks=(2, 5, 6))
    check_reader(open_movie(lazy), movie)
    assert ArrayReader(movie[:, np.newaxis]).shape == movie.shape  # (T, 1, Y, X) is fine


def test_singleton_axis_in_file_is_dropped(tmp_path: Path) -> None:
    movie = make_movie("uint16")
    tif = tmp_path / "tcyx.tif"
    tifffile.imwrite(tif, movie[:, np.newaxis], photometric="minisblack", metadata={"axes": "TCYX"})
    npy = tmp_path / "tcyx.npy"
    np.save(npy, movie[:, np.newaxis])
    for path in (tif, npy):
        with open_movie(path) as reader:
            check_reader(reader, movie)


def test_tiff_page_by_page_like_a_microscope(tmp_path: Path) -> None:
    movie = make_movie("uint16", (9, 5, 6))
    plain = tmp_path / "scope.tif"
    for frame in movie:  # no tifffile metadata: one page per frame, appended
        tifffile.imwrite(plain, frame, append=True, metadata=None)
    shaped = tmp_path / "pages.tif"
    with tifffile.TiffWriter(shaped) as tw:  # tifffile labels each page a series of its own
        for frame in movie:
            tw.write(frame, contiguous=False)
    for path in (plain, shaped):
        with open_movie(path) as reader:
            check_reader(reader, movie)


def test_tiff_contiguous_series_is_memory_mapped(tmp_path: Path) -> None:
    movie = make_movie("int16")
    path = save(tmp_path / "stack.tiff", movie)
    with open_movie(path) as reader:
        assert reader.access == "memmap"
        check_reader(reader, movie)


def test_tiff_bigtiff(tmp_path: Path) -> None:
    movie = make_movie("uint16")
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, movie, bigtiff=True, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    with open_movie(path) as reader:
        check_reader(reader, movie)


@pytest.mark.parametrize("tile", [None, (16, 16)])
def test_tiff_compressed_reads_blocks(tmp_path: Path, tile: tuple[int, int] | None) -> None:
    movie = make_movie("uint16", (6, 32, 48))
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, movie, compression="zlib", tile=tile, photometric="minisblack")
    with open_movie(path) as reader:
        check_reader(reader, movie)


def test_tiff_frame_rate_from_imagej(tmp_path: Path) -> None:
    movie = make_movie("uint16")
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYX", "finterval": 0.05})
    with open_movie(path) as reader:
        assert reader.metadata["frame_rate"] == pytest.approx(20.0)
        check_reader(reader, movie)


@pytest.mark.parametrize("suffix", [".tif", ".h5", ".zarr", ".npy"])
def test_readers_pickle(tmp_path: Path, suffix: str) -> None:
    movie = make_movie("uint16")
    path = save(tmp_path / f"movie{suffix}", movie)
    with open_movie(path) as reader, pickle.loads(pickle.dumps(reader)) as copy:
        np.testing.assert_array_equal(copy.read(1, 3), reader.read(1, 3))


def test_closed_reader_refuses_reads(tmp_path: Path) -> None:
    path = save(tmp_path / "movie.tif", make_movie("uint16"))
    reader = open_movie(path)
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 1)


# HDF5 dataset choice --------------------------------------------------------------------------


def test_hdf5_auto_pick_explicit_key_and_ambiguity(tmp_path: Path) -> None:
    movie = make_movie("int16")
    path = tmp_path / "rec.h5"
    with h5py.File(path, "w") as f:
        f["imaging/raw"] = movie
        f["imaging/raw"].attrs["frame_rate"] = 30.0
        f["mean"] = movie.mean(axis=0)
        f["timestamps"] = np.arange(7.0)
    with open_movie(path) as reader:
        assert reader.metadata["key"] == "imaging/raw"
        assert reader.metadata["frame_rate"] == 30.0
        check_reader(reader, movie)
    with h5py.File(path, "a") as f:
        f["imaging/denoised"] = movie.astype("f4")
    with pytest.raises(InputError, match=r"rec\.h5.*'imaging/denoised'.*'imaging/raw'.*--key"):
        open_movie(path)
    with open_movie(path, key="imaging/denoised") as reader:
        check_reader(reader, movie.astype("f4"))
    with pytest.raises(InputError, match=r"rec\.h5.*no dataset 'nope'.*--key"):
        open_movie(path, key="nope")
    with pytest.raises(InputError, match=r"'imaging' is a group"):
        open_movie(path, key="imaging")


def test_hdf5_without_movie(tmp_path: Path) -> None:
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((5, 6))
    with pytest.raises(InputError, match=r"image\.h5.*no 3-D dataset.*'image' \(5, 6\)"):
        open_movie(path)


# errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothere\.tif: no such file; check the path"):
        open_movie(tmp_path / "nothere.tif")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "movie.avi"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match=r"movie\.avi.*unknown extension.*\.tif.*\.h5.*convert"):
        open_movie(path)


def test_folder_that_is_not_zarr(tmp_path: Path) -> None:
    folder = tmp_path / "frames.tif"
    folder.mkdir()
    with pytest.raises(InputError, match=r"frames\.tif.*is a folder.*one multi-page TIFF"):
        open_movie(folder)


@pytest.mark.parametrize("suffix", [".tif", ".h5", ".npy"])
def test_single_image(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"image{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, np.zeros((16, 16), "uint16"))
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["data"] = np.zeros((16, 16))
        with pytest.raises(InputError, match=r"image\.h5.*no 3-D dataset"):
            open_movie(path)
        with pytest.raises(InputError, match=r"image\.h5.*single 2-D image.*time series"):
            open_movie(path, key="data")
        return
    else:
        np.save(path, np.zeros((16, 16)))
    with pytest.raises(InputError, match=rf"image\{suffix}.*single 2-D image.*\(16, 16\).*series"):
        open_movie(path)


def test_four_d_movie(tmp_path: Path) -> None:
    path = tmp_path / "hyper.tif"
    data = np.zeros((3, 2, 8, 8), "uint16")
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TCYX"})
    with pytest.raises(InputError, match=r"hyper\.tif.*4-D.*\(3, 2, 8, 8\).*TCYX.*single channel"):
        open_movie(path)
    with pytest.raises(InputError, match=r"4-D.*T, Y, X"):
        open_movie(data)


@pytest.mark.parametrize("dtype", ["bool", "complex64"])
def test_non_real_dtype(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "odd.npy"
    np.save(path, np.zeros((3, 4, 4), dtype))
    with pytest.raises(InputError, match=rf"odd\.npy.*{dtype}.*integer or floating"):
        open_movie(path)
    with pytest.raises(InputError, match="integer or floating"):
        open_movie(np.zeros((3, 4, 4), dtype))


@pytest.mark.parametrize("layout", ["pages", "contiguous", "compressed"])
def test_truncated_tiff(tmp_path: Path, layout: str) -> None:
    movie = make_movie("uint16", (20, 32, 32))
    path = tmp_path / "cut.tif"
    if layout == "pages":
        for frame in movie:
            tifffile.imwrite(path, frame, append=True, metadata=None)
    else:
        compression = "zlib" if layout == "compressed" else None
        tifffile.imwrite(path, movie, compression=compression, photometric="minisblack")
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with (
        pytest.raises(InputError, match=r"cut\.tif.*(truncated|corrupt)"),
        open_movie(path) as reader,
    ):
        reader.read(0, len(reader))


def test_corrupt_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match=r"junk\.h5.*corrupt.*check the file"):
        open_movie(path)


def test_corrupt_npy_and_zarr(tmp_path: Path) -> None:
    npy = tmp_path / "junk.npy"
    npy.write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match=r"junk\.npy.*numpy\.save"):
        open_movie(npy)
    store = tmp_path / "empty.zarr"
    store.mkdir()
    with pytest.raises(InputError, match=r"empty\.zarr.*zarr metadata"):
        open_movie(store)


def test_key_only_for_hdf5_and_zarr(tmp_path: Path) -> None:
    path = save(tmp_path / "movie.tif", make_movie("uint16"))
    with pytest.raises(InputError, match=r"--key .data. applies only to HDF5, zarr and NWB"):
        open_movie(path, key="data")


# real recordings ----------------------------------------------------------------------------


@pytest.fixture
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real recordings not found at {os.path.normpath(DATA)}")
    return DATA


def test_real_optinist_tiff(shared_data: Path) -> None:
    path = shared_data / "optinist-mouse2p-top-2000x64x128.tif"
    if not path.exists():
        pytest.skip(f"{path.name} not in {shared_data}")
    with open_movie(path) as reader:
        assert reader.shape == (2000, 64, 128)
        assert reader.dtype == np.uint16
        block = reader.read(0, 10)
        last = reader.read(1990, 2000)
    assert block.shape == (10, 64, 128)
    assert block.dtype == np.float32
    assert last.shape == (10, 64, 128)
    assert block.max() > 0
    with tifffile.TiffFile(path) as tif:
        first = np.stack([tif.pages[i].asarray() for i in range(10)])
    np.testing.assert_array_equal(block, first)


def test_real_allen_hdf5(shared_data: Path) -> None:
    path = shared_data / "allen-registered-100x100x100.h5"
    if not path.exists():
        pytest.skip(f"{path.name} not in {shared_data}")
    with open_movie(path) as reader:
        assert reader.shape == (100, 100, 100)
        assert reader.metadata["key"] == "data"
        assert reader.dtype == np.int16
        block = reader.read(90, 100)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(block, f["data"][90:100])


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_reading_a_mapped_movie_through_does_not_keep_it_resident(
    tmp_path: Path, suffix: str
) -> None:
    # Memory-mapped files: the pages read must not pile up in resident memory, or a long
    # recording read through once makes the run's peak memory the file's size.
    movie = np.random.default_rng(0).integers(0, 1000, (200, 512, 512), dtype=np.uint16)
    path = tmp_path / f"movie{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, movie, bigtiff=True)
    else:
        np.save(path, movie)
    del movie
    with open_movie(path) as reader:
        before = _resident_mb()
        for start in range(0, 200, 20):
            block = reader.read(start, start + 20)
            assert block[0, 0, 0] >= 0  # really read
            del block
        grown = _resident_mb() - before
    assert grown < 40, f"{grown:.0f} MB of the 100 MB file stayed resident"


def test_reading_a_copy_on_write_map_keeps_its_changes(tmp_path: Path) -> None:
    # A copy-on-write map holds changes in memory only; releasing its pages would lose them.
    path = tmp_path / "movie.npy"
    np.save(path, np.zeros((20, 64, 64), dtype=np.uint16))
    movie = np.load(path, mmap_mode="c")
    movie[:] = 7
    block = ArrayReader(movie).read(0, 20)
    assert np.all(block == 7) and np.all(movie == 7)
