"""ScanImage TIFFs: de-interleaving channels and planes, metadata, and choice errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from calmdown.errors import InputError
from calmdown.io import open_movie
from calmdown.io.scanimage import ScanImageReader, is_scanimage, scanimage_layout


def si_software(channels: list[int], planes: int, **extra: object) -> str:
    """ScanImage-like ``SI.*`` frame data, as ScanImage puts in each page's Software tag."""
    saved = "[" + ";".join(str(c) for c in channels) + "]" if len(channels) > 1 else channels[0]
    lines = {
        "SI.VERSION_MAJOR": "'2021'",
        "SI.hChannels.channelSave": saved,
        "SI.hStackManager.numSlices": planes,
        "SI.hStackManager.actualNumSlices": planes,
        "SI.hFastZ.enable": "true" if planes > 1 else "false",
        "SI.hRoiManager.scanFrameRate": 30.0,
        "SI.hRoiManager.scanVolumeRate": 30.0 / planes,
        "SI.hRoiManager.scanZoomFactor": 2.5,
        **extra,
    }
    return "\n".join(f"{k} = {v}" for k, v in lines.items())


def write_si(
    path: Path,
    movie: np.ndarray,
    channels: list[int],
    *,
    flyback: int = 0,
    extra_pages: int = 0,
    **extra: object,
) -> Path:
    """Write `movie` (T, planes, channels, Y, X) page by page in ScanImage's order."""
    t, planes, n_channels, y, x = movie.shape
    assert n_channels == len(channels)
    software = si_software(channels, planes, **extra)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        number = 0
        for frame in range(t):
            for plane in range(planes + flyback):
                for c in range(n_channels):
                    page = movie[frame, plane, c] if plane < planes else np.zeros((y, x), "i2")
                    number += 1
                    tw.write(
                        page,
                        software=software,
                        description=f"frameNumbers = {number}\nframeTimestamps_sec = {number}",
                        metadata=None,
                    )
        for _ in range(extra_pages):
            tw.write(np.zeros((y, x), "i2"), software=software, metadata=None)
    return path


def make(t: int = 5, planes: int = 3, channels: int = 2, y: int = 6, x: int = 7) -> np.ndarray:
    """Frames whose values encode (t, plane, channel), so mix-ups show."""
    grid = np.zeros((t, planes, channels, y, x), dtype="int16")
    for i in range(t):
        for z in range(planes):
            for c in range(channels):
                grid[i, z, c] = 1000 * c + 100 * z + i
    return grid + np.arange(y * x, dtype="int16").reshape(y, x)


def test_detects_scanimage(tmp_path: Path) -> None:
    si = write_si(tmp_path / "si.tif", make(2, 1, 1), [1])
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 4, 4), "u2"))
    assert is_scanimage(si)
    assert not is_scanimage(plain)
    assert not is_scanimage(tmp_path / "missing.tif")


@pytest.mark.parametrize(("channel", "plane"), [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_deinterleaves_each_channel_and_plane(tmp_path: Path, channel: int, plane: int) -> None:
    movie = make()
    path = write_si(tmp_path / "vol.tif", movie, [1, 2])
    with open_movie(path, channel=channel, plane=plane) as reader:
        assert isinstance(reader, ScanImageReader)
        assert reader.shape == (5, 6, 7)
        assert reader.dtype == np.int16
        expected = movie[:, plane - 1, channel - 1].astype(np.float32)
        np.testing.assert_array_equal(reader.read(0, 5), expected)
        np.testing.assert_array_equal(reader.read(2, 4), expected[2:4])
        assert reader.read(5, 5).shape == (0, 6, 7)
        meta = reader.metadata
    assert meta["frame_rate"] == pytest.approx(10.0)  # the volume rate: one frame per volume
    assert meta["zoom"] == 2.5
    assert meta["channels"] == [1, 2]
    assert meta["planes"] == 3
    assert (meta["channel"], meta["plane"]) == (channel, plane)


def test_channel_numbers_are_scanimage_numbers(tmp_path: Path) -> None:
    movie = make(4, 1, 2)
    path = write_si(tmp_path / "ch23.tif", movie, [2, 3])
    with open_movie(path, channel=3) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 0, 1].astype(np.float32))
        assert reader.metadata["frame_rate"] == pytest.approx(30.0)
    with pytest.raises(InputError, match=r"ch23\.tif: has no channel 1; .*2 or 3.*--channel"):
        open_movie(path, channel=1)


def test_single_channel_single_plane_needs_no_choice(tmp_path: Path) -> None:
    movie = make(6, 1, 1)
    path = write_si(tmp_path / "one.tif", movie, [1])
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 6), movie[:, 0, 0].astype(np.float32))
        assert "plane" in reader.metadata


def test_ambiguous_choice_lists_the_options(tmp_path: Path) -> None:
    path = write_si(tmp_path / "vol.tif", make(), [1, 2])
    with pytest.raises(InputError, match=r"vol\.tif.*2 channels \(1 or 2\).*--channel 1 or 2"):
        open_movie(path)
    with pytest.raises(InputError, match=r"vol\.tif.*--channel.*and a plane with --plane"):
        open_movie(path)
    with pytest.raises(InputError, match=r"vol\.tif.*volume recording of 3 planes.*--plane 1 to 3"):
        open_movie(path, channel=1)
    with pytest.raises(InputError, match=r"has no plane 4.*--plane 1 to 3"):
        open_movie(path, channel=1, plane=4)
    with pytest.raises(InputError, match=r"has no plane 0"):
        open_movie(path, channel=1, plane=0)
    with pytest.raises(InputError, match=r"--key 'x' applies only"):
        open_movie(path, key="x", channel=1, plane=1)


def test_flyback_frames_are_skipped(tmp_path: Path) -> None:
    movie = make(4, 2, 1)
    path = write_si(
        tmp_path / "fly.tif",
        movie,
        [1],
        flyback=1,
        **{"SI.hFastZ.discardFlybackFrames": "true", "SI.hFastZ.numDiscardFlybackFrames": 1},
    )
    with open_movie(path, plane=2) as reader:
        assert reader.shape == (4, 6, 7)
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 1, 0].astype(np.float32))


def test_incomplete_last_volume_is_dropped_with_a_warning(tmp_path: Path) -> None:
    movie = make(3, 2, 2)
    path = write_si(tmp_path / "stopped.tif", movie, [1, 2], extra_pages=3)
    with (
        pytest.warns(UserWarning, match=r"3 pages after the last complete volume"),
        open_movie(path, channel=2, plane=2) as reader,
    ):
        assert len(reader) == 3
        np.testing.assert_array_equal(reader.read(0, 3), movie[:, 1, 1].astype(np.float32))


def test_slow_stack_is_slice_major(tmp_path: Path) -> None:
    movie = make(4, 2, 1)  # 4 frames at each of 2 slices
    software = si_software([1], 2, **{"SI.hFastZ.enable": "false"})
    software += "\nSI.hStackManager.framesPerSlice = 4"
    path = tmp_path / "slow.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for z in range(2):
            for t in range(4):
                tw.write(movie[t, z, 0], software=software, metadata=None)
    with open_movie(path, plane=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 1, 0].astype(np.float32))


def test_classic_tiff_scanimage_and_pickle(tmp_path: Path) -> None:
    movie = make(5, 1, 2)
    path = tmp_path / "classic.tif"
    software = si_software([1, 2], 1)
    with tifffile.TiffWriter(path) as tw:  # not BigTIFF: tifffile would guess page offsets
        for t in range(5):
            for c in range(2):
                tw.write(movie[t, 0, c], software=software, metadata=None)
    with open_movie(path, channel=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 5), movie[:, 0, 1].astype(np.float32))
        copy = pickle.loads(pickle.dumps(reader))
        np.testing.assert_array_equal(copy.read(1, 3), reader.read(1, 3))
        copy.close()


def test_legacy_scanimage_description(tmp_path: Path) -> None:
    movie = make(4, 1, 2)
    description = (
        "state.software.version = 3.8\nstate.acq.numberOfChannelsSave = 2\n"
        "state.acq.numberOfZSlices = 1\nstate.acq.frameRate = 4\nstate.acq.zoomFactor = 3"
    )
    path = tmp_path / "si3.tif"
    with tifffile.TiffWriter(path) as tw:
        for t in range(4):
            for c in range(2):
                tw.write(movie[t, 0, c], description=description, metadata=None)
    with open_movie(path, channel=1) as reader:
        np.testing.assert_array_equal(reader.read(0, 4), movie[:, 0, 0].astype(np.float32))
        assert reader.metadata["zoom"] == 3
        assert reader.metadata["frame_rate"] == 4


def test_truncated_scanimage_file(tmp_path: Path) -> None:
    path = write_si(tmp_path / "cut.tif", make(20, 1, 2, 32, 32), [1, 2])
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with (
        pytest.raises(InputError, match=r"cut\.tif.*(truncated|corrupt)"),
        open_movie(path, channel=1) as reader,
    ):
        reader.read(0, len(reader))


def test_layout_settings() -> None:
    layout = scanimage_layout({"SI.hChannels.channelSave": 2})
    assert layout.channels == (2,) and layout.planes == 1
    off = scanimage_layout({"SI.hStackManager.numSlices": 5, "SI.hStackManager.enable": False})
    assert off.planes == 1
    with pytest.raises(ValueError, match="channel numbers"):
        scanimage_layout({"SI.hChannels.channelSave": "abc"})


def test_bad_settings_are_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    software = "SI.hChannels.channelSave = [1;1]\nSI.hStackManager.numSlices = 1"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for _ in range(4):
            tw.write(np.zeros((4, 4), "i2"), software=software, metadata=None)
    with pytest.raises(InputError, match=r"bad\.tif.*ScanImage settings.*export"):
        open_movie(path)
