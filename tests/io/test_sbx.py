"""Scanbox ``.sbx`` recordings: layout, channels and planes, metadata, damage, the CLI."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.errors import InputError
from calmdown.io import count_planes, open_movie
from calmdown.io.sbx import SbxReader
from calmdown.simulate import simulate

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def write_sbx(
    folder: Path, movie: np.ndarray, name: str = "rec", **info: Any
) -> tuple[Path, dict[str, Any]]:
    """Write `movie` ``(T, planes, lines, pixels, channels)`` as Scanbox would; return the .sbx.

    Scanbox stores each value inverted (65535 - value), frame by frame, plane by plane, line
    by line, pixel by pixel, channel by channel. `info` overrides the settings written.
    """
    _, planes, lines, pixels, channels = movie.shape
    settings: dict[str, Any] = {
        "sz": np.array([lines, pixels], dtype=float),
        "chan": {"nchan": channels},
        "scanmode": 1,
        "resfreq": 7930.0,
        "scanbox_version": 3,
        "config": {"lines": 512, "magnification": 2, "magnification_list": ["1", "1.7", "2"]},
    }
    if planes > 1:
        settings["volscan"] = 1
        settings["otwave"] = np.linspace(0, 100, planes)
    settings.update(info)
    settings = {k: v for k, v in settings.items() if v is not None}
    scipy.io.savemat(folder / f"{name}.mat", {"info": settings})
    path = folder / f"{name}.sbx"
    (np.uint16(65535) - movie.astype("<u2")).tofile(path)
    return path, settings


def volume(t: int = 6, planes: int = 1, lines: int = 5, pixels: int = 7, channels: int = 1):
    """Return a movie whose every value says where it is: frame, plane, line, pixel, channel."""
    index = np.indices((t, planes, lines, pixels, channels))
    weights = np.array([10000, 3000, 100, 10, 1]).reshape(5, 1, 1, 1, 1, 1)
    return (index * weights).sum(axis=0).astype(np.uint16)


def test_single_plane_reads_back_exactly_with_its_rate_and_zoom(tmp_path: Path) -> None:
    movie = volume()
    path, _ = write_sbx(tmp_path, movie)
    with open_movie(path) as reader:
        assert isinstance(reader, SbxReader)
        assert reader.shape == (6, 5, 7)
        np.testing.assert_array_equal(reader.read(0, 6), movie[:, 0, :, :, 0])
        np.testing.assert_array_equal(reader.read(2, 4), movie[2:4, 0, :, :, 0])
        meta = reader.metadata
    assert meta["frame_rate"] == pytest.approx(7930.0 / 512)
    assert meta["zoom"] == 1.7
    assert (meta["channels"], meta["planes"], meta["channel"], meta["plane"]) == (1, 1, 1, 1)


def test_every_channel_and_plane_of_a_volume_is_its_own_movie(tmp_path: Path) -> None:
    movie = volume(t=4, planes=3, channels=2)
    path, _ = write_sbx(tmp_path, movie)
    assert count_planes(path) == 3
    for c in (1, 2):
        for p in (1, 2, 3):
            with open_movie(path, channel=c, plane=p) as reader:
                assert reader.shape == (4, 5, 7)
                np.testing.assert_array_equal(reader.read(0, 4), movie[:, p - 1, :, :, c - 1])
                assert reader.metadata["frame_rate"] == pytest.approx(7930.0 / 512 / 3)
    with pytest.raises(InputError, match=r"2 channel\(s\), 3 plane\(s\); choose a channel"):
        open_movie(path, plane=1)
    with pytest.raises(InputError, match="choose a plane with --plane 1 to 3"):
        open_movie(path, channel=1)
    with pytest.raises(InputError, match="has no plane 4"):
        open_movie(path, channel=1, plane=4)
    with pytest.raises(InputError, match="has no channel 0"):
        open_movie(path, channel=0, plane=1)


def test_settings_file_names_the_recording_too(tmp_path: Path) -> None:
    movie = volume()
    path, _ = write_sbx(tmp_path, movie)
    with open_movie(path.with_suffix(".mat")) as reader:
        assert reader.path == path
        np.testing.assert_array_equal(reader.read(0, 1), movie[:1, 0, :, :, 0])


def test_older_channel_codes_and_bidirectional_folded_rates(tmp_path: Path) -> None:
    both = volume(channels=2)
    path, _ = write_sbx(tmp_path, both, chan=None, channels=1, scanmode=0)
    with open_movie(path, channel=2) as reader:
        np.testing.assert_array_equal(reader.read(0, 6), both[:, 0, :, :, 1])
        assert reader.metadata["frame_rate"] == pytest.approx(2 * 7930.0 / 512)
        assert reader.metadata["bidirectional"] is True
    one = volume()
    path, _ = write_sbx(tmp_path, one, name="red", chan=None, channels=3, fold_lines=128)
    with open_movie(path) as reader:
        np.testing.assert_array_equal(reader.read(0, 6), one[:, 0, :, :, 0])
        assert reader.metadata["pmt"] == 1
        assert reader.metadata["frame_rate"] == pytest.approx(7930.0 / 512 * 4)


def test_a_volume_scan_switched_off_is_one_plane(tmp_path: Path) -> None:
    movie = volume()
    path, _ = write_sbx(tmp_path, movie, volscan=0, otwave=np.array([0.0, 50.0]))
    assert count_planes(path) == 1
    with open_movie(path) as reader:
        assert reader.shape == (6, 5, 7)


def test_an_interrupted_volume_is_dropped_with_a_warning(tmp_path: Path) -> None:
    movie = volume(t=5, planes=2)
    path, _ = write_sbx(tmp_path, movie)
    data = path.read_bytes()
    frame = 5 * 7 * 2
    path.write_bytes(data[: -frame - 3])  # last volume's second plane lost, and 3 bytes more
    with pytest.warns(UserWarning, match="after the last complete volume are ignored"):
        reader = open_movie(path, plane=2)
    with reader:
        assert reader.shape == (4, 5, 7)
        np.testing.assert_array_equal(reader.read(0, 4), movie[:4, 1, :, :, 0])


def test_damaged_or_missing_files_say_what_to_do(tmp_path: Path) -> None:
    path, _ = write_sbx(tmp_path, volume())
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(InputError, match="less than one volume") as err:
        open_movie(path)
    assert str(path) in str(err.value)

    lone = tmp_path / "lone.sbx"
    lone.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match=r"without its settings file lone\.mat"):
        open_movie(lone)

    bad, _ = write_sbx(tmp_path, volume(), name="bad")
    bad.with_suffix(".mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really")
    with pytest.raises(InputError, match="cannot read the Scanbox settings"):
        open_movie(bad)

    nosize, _ = write_sbx(tmp_path, volume(), name="nosize", sz=None)
    with pytest.raises(InputError, match=r"gives no valid frame size"):
        open_movie(nosize)

    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"x": np.zeros(3)})
    (tmp_path / "other.sbx").write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="holds no Scanbox 'info' struct"):
        open_movie(tmp_path / "other.sbx")

    path, _ = write_sbx(tmp_path, volume(), name="keyed")
    with pytest.raises(InputError, match="--key 'x' applies only"):
        open_movie(path, key="x")


def test_a_reader_travels_to_another_process_by_reopening(tmp_path: Path) -> None:
    movie = volume(planes=2)
    path, _ = write_sbx(tmp_path, movie)
    with open_movie(path, plane=2) as reader:
        clone = pickle.loads(pickle.dumps(reader))
    with clone:
        np.testing.assert_array_equal(clone.read(1, 3), movie[1:3, 1, :, :, 0])
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 1)


@settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    shape=st.tuples(*(st.integers(1, 4) for _ in range(5))),
    cut=st.integers(0, 400),
    flip=st.integers(0, 400),
)
def test_fuzzed_recordings_read_exactly_or_raise_input_error(
    tmp_path: Path, shape: tuple[int, ...], cut: int, flip: int
) -> None:
    movie = volume(*shape)
    folder = tmp_path / f"f{'_'.join(map(str, shape))}_{cut}_{flip}"
    folder.mkdir()
    path, _ = write_sbx(folder, movie)
    data = bytearray(path.read_bytes())
    full = len(data)
    del data[max(0, full - cut) :]
    mat = path.with_suffix(".mat")
    settings_bytes = bytearray(mat.read_bytes())
    flipped = flip < len(settings_bytes) and flip % 3 == 0
    if flipped:
        settings_bytes[flip] ^= 0xFF
        mat.write_bytes(bytes(settings_bytes))
    path.write_bytes(bytes(data))
    channel = 1 if shape[4] > 1 else None
    plane = shape[1] if shape[1] > 1 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an incomplete last volume is dropped with a warning
            reader = open_movie(path, channel=channel, plane=plane)
    except InputError:
        return
    with reader:
        out = reader.read(0, len(reader))
    assert out.dtype == np.float32 and out.shape == reader.shape
    if not flipped:
        assert len(reader) == len(data) // (shape[1] * shape[2] * shape[3] * shape[4] * 2)
        np.testing.assert_array_equal(out, movie[: len(reader), (plane or 1) - 1, :, :, 0])


def test_denoise_every_plane_of_a_scanbox_volume(tmp_path: Path) -> None:
    sims = [simulate("dense", photons=2.0, shape=(60, 24, 24), seed=s).raw for s in (0, 1)]
    movie = np.stack(sims, axis=1)[..., None].clip(0, 65535).astype(np.uint16)
    path, _ = write_sbx(tmp_path, movie)
    out = tmp_path / "out.tif"
    res = CliRunner().invoke(
        app,
        ["denoise", str(path), "-o", str(out), "--plane", "all", "--max-steps", "5"],
    )
    assert res.exit_code == 0, res.output
    for n in (1, 2):
        with open_movie(tmp_path / f"out.plane{n}.tif") as reader:
            assert reader.shape == (60, 24, 24)
    rate = f"{7930.0 / 512 / 2:.3g} frames/s"  # the rate per plane
    for n in (1, 2):
        assert f"Recording: {rate}, zoom 1.7, channel 1, plane {n} of 2." in res.output
