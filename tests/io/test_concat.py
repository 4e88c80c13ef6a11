"""Acquisitions split over numbered files: read as one movie, concatenated in time."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.errors import InputError
from calmdown.io import ConcatReader, count_planes, open_movie
from calmdown.simulate import simulate
from tests.io.test_scanimage import make, write_si


def write_parts(folder: Path, movie: np.ndarray, lengths: list[int], stem: str = "rec_") -> Path:
    """Split `movie` in time into ScanImage-style numbered TIFFs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(lengths, start=1):
        tifffile.imwrite(
            folder / f"{stem}{i:05d}.tif", movie[start : start + n], photometric="minisblack"
        )
        start += n
    return folder


def movie(t: int = 17, y: int = 5, x: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, (t, y, x)).astype("uint16")


@pytest.mark.parametrize("how", ["folder", "pattern"])
def test_reads_across_file_boundaries(tmp_path: Path, how: str) -> None:
    data = movie()
    folder = write_parts(tmp_path / "rec", data, [5, 4, 8])
    (folder / "notes.txt").write_text("ignored")
    source = folder if how == "folder" else folder / "rec_*.tif"
    with open_movie(source) as reader:
        assert isinstance(reader, ConcatReader)
        assert reader.shape == data.shape and reader.dtype == np.uint16
        np.testing.assert_array_equal(reader.read(0, 17), data.astype(np.float32))
        np.testing.assert_array_equal(reader.read(3, 14), data[3:14].astype(np.float32))
        np.testing.assert_array_equal(reader.read(5, 9), data[5:9].astype(np.float32))
        assert reader.read(9, 9).shape == (0, 5, 6)
        assert [Path(f).name for f in reader.metadata["files"]] == [  # type: ignore[union-attr]
            "rec_00001.tif",
            "rec_00002.tif",
            "rec_00003.tif",
        ]
        assert reader.metadata["frames_per_file"] == [5, 4, 8]


def test_numbers_are_sorted_by_value(tmp_path: Path) -> None:
    data = movie(t=9)
    folder = tmp_path / "rec"
    folder.mkdir()
    for number, (start, stop) in zip((2, 10, 1), ((3, 6), (6, 9), (0, 3)), strict=True):
        tifffile.imwrite(folder / f"a_{number}.tif", data[start:stop], photometric="minisblack")
    with pytest.warns(UserWarning, match=r"skip number\(s\) 3, 4, 5, 6, 7, 8, 9"):
        reader = open_movie(folder)
    with reader:
        np.testing.assert_array_equal(reader.read(0, 9), data.astype(np.float32))


def test_mismatched_files_are_named(tmp_path: Path) -> None:
    folder = write_parts(tmp_path / "shape", movie(), [5, 12])
    tifffile.imwrite(folder / "rec_00003.tif", movie(y=6), photometric="minisblack")
    with pytest.raises(InputError, match=r"rec_00003\.tif: has frames of 6 x 6 pixels.*5 x 6"):
        open_movie(folder)
    folder = write_parts(tmp_path / "dtype", movie(), [5, 12])
    tifffile.imwrite(folder / "rec_00003.tif", movie().astype("float32"))
    with pytest.raises(InputError, match=r"rec_00003\.tif: stores float32.*uint16"):
        open_movie(folder)


def test_pickle_round_trip(tmp_path: Path) -> None:
    data = movie()
    folder = write_parts(tmp_path / "rec", data, [6, 11])
    with open_movie(folder) as reader, pickle.loads(pickle.dumps(reader)) as copy:
        assert copy.shape == reader.shape and copy.path == reader.path
        np.testing.assert_array_equal(copy.read(4, 9), reader.read(4, 9))


def test_folders_that_are_not_one_recording(tmp_path: Path) -> None:
    two = write_parts(tmp_path / "two", movie(), [8, 9])
    write_parts(two, movie(), [8, 9], stem="other_")
    with pytest.raises(InputError, match=r"two: holds the numbered TIFF files of 2 recordings"):
        open_movie(two)
    with open_movie(two / "other_*.tif") as reader:
        assert reader.shape == (17, 5, 6)
    loose = write_parts(tmp_path / "loose", movie(), [8, 9])
    tifffile.imwrite(loose / "average.tif", movie(t=3), photometric="minisblack")
    with pytest.raises(InputError, match=r"average\.tif has no trailing number"):
        open_movie(loose)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        tifffile.imwrite(frames / f"f{i}.tif", np.zeros((5, 6), "u2"))
    with pytest.raises(InputError, match=r"frames: holds single-image TIFF files"):
        open_movie(frames)
    with pytest.raises(InputError, match=r"the pattern matches no movie file"):
        open_movie(tmp_path / "nothing_*.tif")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: is a folder"):
        open_movie(empty)


def test_scanimage_parts_planes_and_channels(tmp_path: Path) -> None:
    folder = tmp_path / "si"
    folder.mkdir()
    a, b = make(t=3, planes=2, channels=2), make(t=4, planes=2, channels=2) + 7
    write_si(folder / "vol_00001.tif", a, [1, 2])
    write_si(folder / "vol_00002.tif", b, [1, 2])
    assert count_planes(folder) == 2
    assert count_planes(folder / "vol_*.tif") == 2
    with open_movie(folder, channel=2, plane=2) as reader:
        assert reader.shape == (7, 6, 7)
        expected = np.concatenate([a[:, 1, 1], b[:, 1, 1]]).astype(np.float32)
        np.testing.assert_array_equal(reader.read(0, 7), expected)
        assert reader.metadata["planes"] == 2 and reader.metadata["plane"] == 2
    with pytest.raises(InputError, match=r"vol_00001\.tif: .*choose a channel"):
        open_movie(folder)


def test_scanimage_part_ending_mid_volume(tmp_path: Path) -> None:
    folder = tmp_path / "si"
    folder.mkdir()
    write_si(folder / "vol_00001.tif", make(t=3, planes=2, channels=1), [1], extra_pages=1)
    write_si(folder / "vol_00002.tif", make(t=3, planes=2, channels=1), [1])
    with (
        pytest.raises(InputError, match=r"vol_00001\.tif: ends mid-volume"),
        pytest.warns(UserWarning, match="pages after the last complete volume"),
    ):
        open_movie(folder, plane=1)


def test_cli_denoises_a_folder_of_parts(tmp_path: Path) -> None:
    sim = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    folder = write_parts(tmp_path / "rec", sim.raw.astype("uint16"), [25, 35])
    out = tmp_path / "out.tif"
    args = ["denoise", str(folder), "-o", str(out), "--max-steps", "5", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    with open_movie(out) as reader:
        assert reader.shape == (60, 32, 32)
    sidecar = json.loads((tmp_path / "out.calmdown.json").read_text())
    assert [Path(f).name for f in sidecar["input_files"]] == ["rec_00001.tif", "rec_00002.tif"]
    # An output that would overwrite one of the parts is refused before any training.
    part = folder / "rec_00002.tif"
    before = part.read_bytes()
    res = CliRunner().invoke(app, ["denoise", str(folder / "rec_*.tif"), "-o", str(part), "-q"])
    assert res.exit_code == 2 and "one of the input files" in res.output
    assert part.read_bytes() == before
