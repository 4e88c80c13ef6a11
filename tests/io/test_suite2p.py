"""suite2p binaries: memory-mapped reading, ops.npy paths from other machines, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from calmdown.errors import InputError
from calmdown.io import open_movie
from calmdown.io.suite2p import Suite2pReader


def make_plane(
    folder: Path, *, frames: int = 9, ly: int = 6, lx: int = 5, chan2: bool = False, **ops: object
) -> np.ndarray:
    """Write suite2p's plane folder: data.bin (int16) and ops.npy with a foreign reg_file."""
    folder.mkdir(parents=True, exist_ok=True)
    movie = np.random.default_rng(1).integers(-300, 3000, (frames, ly, lx)).astype("int16")
    movie.tofile(folder / "data.bin")
    settings: dict[str, object] = {
        "Ly": ly,
        "Lx": lx,
        "nframes": frames,
        "fs": 15.5,
        "nchannels": 2 if chan2 else 1,
        "reg_file": "D:\\\\suite2p\\\\plane0\\\\data.bin",  # another machine's path
    }
    if chan2:
        (movie // 2).tofile(folder / "data_chan2.bin")
        settings["reg_file_chan2"] = "/home/someone/suite2p/plane0/data_chan2.bin"
    settings.update(ops)
    np.save(folder / "ops.npy", settings, allow_pickle=True)
    return movie


@pytest.mark.parametrize("what", ["folder", "root", "ops", "bin"])
def test_reads_every_way_of_naming_it(tmp_path: Path, what: str) -> None:
    plane = tmp_path / "suite2p" / "plane0"
    movie = make_plane(plane)
    source = {
        "folder": plane,
        "root": tmp_path / "suite2p",
        "ops": plane / "ops.npy",
        "bin": plane / "data.bin",
    }[what]
    with open_movie(source) as reader:
        assert isinstance(reader, Suite2pReader)
        assert reader.shape == (9, 6, 5)
        assert reader.dtype == np.int16
        assert reader.metadata["frame_rate"] == 15.5
        np.testing.assert_array_equal(reader.read(0, 9), movie.astype(np.float32))
        np.testing.assert_array_equal(reader.read(4, 6), movie[4:6].astype(np.float32))
        assert reader.bin_path == plane / "data.bin"
        assert isinstance(reader._array, np.memmap)  # lazy: nothing loaded
        copy = pickle.loads(pickle.dumps(reader))
        np.testing.assert_array_equal(copy.read(1, 2), reader.read(1, 2))
        copy.close()


def test_second_channel(tmp_path: Path) -> None:
    movie = make_plane(tmp_path / "plane0", chan2=True)
    with open_movie(tmp_path / "plane0", channel=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 9), (movie // 2).astype(np.float32))
        assert reader.metadata["channel"] == 2
    with pytest.raises(InputError, match=r"has no channel 3.*--channel 1 or 2"):
        open_movie(tmp_path / "plane0", channel=3)
    with pytest.raises(InputError, match=r"--plane 1 does not apply to a suite2p plane"):
        open_movie(tmp_path / "plane0", plane=1)


def test_nframes_missing_is_taken_from_the_size(tmp_path: Path) -> None:
    movie = make_plane(tmp_path / "p", nframes=None)
    with open_movie(tmp_path / "p") as reader:
        assert len(reader) == len(movie)


def test_errors(tmp_path: Path) -> None:
    make_plane(tmp_path / "cut")
    with open(tmp_path / "cut" / "data.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(InputError, match=r"data\.bin: is truncated: ops\.npy promises 9 frames"):
        open_movie(tmp_path / "cut")
    make_plane(tmp_path / "nobin")
    (tmp_path / "nobin" / "data.bin").unlink()
    with pytest.raises(InputError, match=r"nobin: has no registered movie.*registration"):
        open_movie(tmp_path / "nobin")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "data.bin").write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match=r"data\.bin: has no ops\.npy beside it"):
        open_movie(lonely / "data.bin")
    make_plane(tmp_path / "two" / "plane0")
    make_plane(tmp_path / "two" / "plane1")
    with pytest.raises(InputError, match=r"two: holds 2 suite2p planes.*plane0.*plane1"):
        open_movie(tmp_path / "two")
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "ops.npy", np.zeros(3))
    with pytest.raises(InputError, match=r"ops\.npy: is not a suite2p ops\.npy"):
        open_movie(bad)
    make_plane(tmp_path / "nosize", Ly=None)
    with pytest.raises(InputError, match=r"ops\.npy: has no frame size"):
        open_movie(tmp_path / "nosize")
    with pytest.raises(InputError, match=r"--key 'k' applies only"):
        open_movie(tmp_path / "cut", key="k")
