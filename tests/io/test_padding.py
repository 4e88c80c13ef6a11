"""The padding motion correction leaves at frame edges: found, refused with the fix, cropped."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import calmdown
from calmdown.cli import app
from calmdown.errors import InputError
from calmdown.io import open_movie
from calmdown.io.padding import CroppedReader, find_padding, measured_region, parse_crop
from calmdown.pipeline import prepare
from calmdown.simulate import simulate

runner = CliRunner()
SHIFT = 3


def registered(fill: float, frames: int = 200, size: int = 48, seed: int = 1) -> np.ndarray:
    """Return a registered movie: content aligned, the edges that moved in (up to 3 px) filled."""
    raw = simulate("dense", photons=2.0, shape=(frames, size, size), seed=seed).raw
    out = raw.astype(np.float32)
    shifts = np.random.default_rng(0).integers(-SHIFT, SHIFT + 1, size=(frames, 2))
    shifts[0] = (SHIFT, -SHIFT)  # the largest shifts occur, at known frames
    shifts[1] = (-SHIFT, SHIFT)
    for t, (dy, dx) in enumerate(shifts):
        if dy > 0:
            out[t, :dy] = fill
        elif dy < 0:
            out[t, dy:] = fill
        if dx > 0:
            out[t, :, :dx] = fill
        elif dx < 0:
            out[t, :, dx:] = fill
    return out


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_padding_is_found_with_its_depth_at_each_edge(fill: float) -> None:
    movie = registered(fill)
    padding = find_padding(movie[:1], start=0)
    assert padding is not None
    assert (padding.top, padding.bottom, padding.left, padding.right) == (SHIFT, 0, 0, SHIFT)
    assert np.isnan(padding.value) if np.isnan(fill) else padding.value == fill
    n, size = movie.shape[:2]
    assert measured_region(open_movie(movie)) == (
        (0, n),
        (SHIFT, size - SHIFT),
        (SHIFT, size - SHIFT),
    )


def test_unpadded_movies_and_dark_photon_counts_are_not_padding() -> None:
    movie = simulate("dense", photons=0.5, shape=(50, 32, 32), seed=0).raw
    assert find_padding(movie.astype(np.float32)) is None
    # Photon counts in a dark field: edge rows of zeros by chance are not padding.
    counts = np.random.default_rng(0).poisson(0.02, size=(50, 32, 32)).astype(np.float32)
    assert (counts[:, 0] == 0).all(axis=1).any()  # such rows occur
    assert find_padding(counts) is None
    # A constant frame is left to the checks that name it.
    assert find_padding(np.full((3, 16, 16), 7.0, np.float32)) is None


def test_real_recordings_have_no_padding(shared_data: Path) -> None:
    for name, key in (
        ("allen-registered-100x100x100.h5", "data"),
        ("optinist-mouse2p-top-2000x64x128.tif", None),
    ):
        with open_movie(shared_data / name, key=key) as reader:
            n, h, w = reader.shape
            assert measured_region(reader) == ((0, n), (0, h), (0, w)), name


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_a_padded_movie_is_refused_with_the_fix(fill: float) -> None:
    with pytest.raises(InputError) as err:
        prepare(registered(fill), calmdown.make_config())
    text = str(err.value)
    for words in ("padding", "motion correction", "frame 0", "rows 3:48, columns 0:45", "--crop"):
        assert words in text, (words, text)


def test_nan_padding_after_a_zero_padded_frame_is_named_as_padding() -> None:
    nan_filled = registered(np.nan)
    zero_filled = registered(0.0)[:1]  # an earlier frame zero-filled (another tool's)
    movie = np.concatenate([zero_filled, nan_filled])
    with pytest.raises(InputError, match=r"frame 1 has 3 rows at the top.* filled with NaN"):
        open_movie(movie).read(0, 50)


def test_the_crop_auto_gives_the_noise_model_of_the_unpadded_movie() -> None:
    size = 48
    clean = simulate("dense", photons=2.0, shape=(200, size, size), seed=1).raw
    whole = prepare(clean[:, SHIFT:-SHIFT, SHIFT:-SHIFT], calmdown.make_config()).noise
    for fill in (0.0, np.nan):
        prep = prepare(open_movie(registered(fill), crop="auto"), calmdown.make_config())
        assert prep.reader.shape == (200, size - 2 * SHIFT, size - 2 * SHIFT)
        assert prep.noise.gain == pytest.approx(whole.gain, rel=1e-6)
        assert prep.noise.offset == pytest.approx(whole.offset, rel=1e-6)
        prep.close()


def test_explicit_crops_and_their_errors() -> None:
    movie = registered(np.nan)
    assert parse_crop("3:45,:40") == ((3, 45), (0, 40))
    reader = open_movie(movie, crop="3:45,3:45")
    assert isinstance(reader, CroppedReader)
    assert reader.shape == (200, 42, 42)
    np.testing.assert_array_equal(reader.read(5, 7), movie[5:7, 3:45, 3:45])
    assert pickle.loads(pickle.dumps(reader)).read(0, 1).shape == (1, 42, 42)
    with pytest.raises(InputError, match="NaN"):  # NaN inside the crop still stops
        open_movie(movie, crop="0:45,3:45").read(0, 1)
    with pytest.raises(InputError, match="Y0:Y1,X0:X1"):
        parse_crop("3-45")
    with pytest.raises(InputError, match="not within the movie, which has 200 frames of 48 rows"):
        open_movie(movie, crop=((0, 60), (0, 10)))
    # A movie without padding is read whole by the automatic crop.
    plain = simulate("dense", photons=2.0, shape=(20, 16, 16), seed=0).raw
    assert not isinstance(open_movie(plain, crop="auto"), CroppedReader)


def test_cli_refuses_padding_then_denoises_the_measured_region(tmp_path: Path) -> None:
    raw = tmp_path / "reg.tif"
    tifffile.imwrite(raw, registered(0.0, frames=60, size=32))
    out = tmp_path / "den.tif"
    fast = ["--max-steps", "3", "--time-budget", "5", "--threads", "1", "-q"]
    result = runner.invoke(app, ["denoise", str(raw), "-o", str(out), *fast])
    assert result.exit_code == 2, result.output
    assert "padding" in result.output and "--crop auto" in result.output
    assert not out.exists()
    result = runner.invoke(
        app, ["denoise", str(raw), "-o", str(out), "--crop", "auto", "--interval", "0.9", *fast]
    )
    assert result.exit_code == 0, result.output
    for path in (out, tmp_path / "den.lower.tif", tmp_path / "den.upper.tif"):
        data = tifffile.imread(path)
        assert data.shape == (60, 32 - 2 * SHIFT, 32 - 2 * SHIFT)
        assert np.isfinite(data).all()


def test_cli_traces_with_the_automatic_crop_keep_rois_drawn_on_the_whole_frame(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "reg.tif"
    tifffile.imwrite(raw, registered(0.0, frames=60, size=32))
    labels = np.zeros((32, 32), dtype=np.int32)
    labels[0:2, 10:14] = 1  # in the padding only: left out
    labels[8:14, 8:14] = 2
    labels[20:31, 20:31] = 3  # partly in the padding
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "traces"
    fast = ["--max-steps", "3", "--time-budget", "5", "--threads", "1", "--samples", "4", "-q"]
    result = runner.invoke(
        app,
        [
            "traces",
            str(raw),
            "--rois",
            str(tmp_path / "labels.npy"),
            "-o",
            str(out),
            *fast,
            "--crop",
            "auto",
        ],
    )
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "traces.npz") as data:
        assert data["roi_ids"].tolist() == [2, 3]
        assert data["f_mean"].shape == (2, 60) and np.isfinite(data["f_mean"]).all()


@pytest.mark.parametrize(
    ("frames", "named", "cut"),
    [
        (slice(0, 10), "frames 0-9 of frames 0:", "movie[10:]"),
        (150, "frame 150 of", "movie[:150] and movie[151:]"),
    ],
)
def test_blank_frames_are_refused_by_number(frames: slice | int, named: str, cut: str) -> None:
    movie = simulate("dense", photons=2.0, shape=(300, 32, 32), seed=0).raw.astype(np.float32)
    movie[frames] = 0.0
    with pytest.raises(InputError) as err:
        prepare(movie, calmdown.make_config(), blank_frames="error")
    text = str(err.value)
    for words in (named, "one value in every pixel (0)", "blank frames", f"e.g. {cut} in"):
        assert words in text, (words, text)


def test_the_automatic_crop_cuts_blank_frames_at_the_start_and_the_end() -> None:
    movie = registered(np.nan, frames=120, size=32)
    movie[:7] = 0.0  # the shutter opened late
    movie[-3:] = np.nan  # and the last frames were dropped
    reader = open_movie(movie, crop="auto")
    assert reader.region == ((7, 117), (SHIFT, 32 - SHIFT), (SHIFT, 32 - SHIFT))
    np.testing.assert_array_equal(reader.read(0, 2), movie[7:9, SHIFT:-SHIFT, SHIFT:-SHIFT])
    assert prepare(reader, calmdown.make_config()).reader.shape == (110, 26, 26)
    explicit = open_movie(movie, crop="7:117,3:29,3:29")
    assert explicit.region == reader.region
    np.testing.assert_array_equal(explicit.read(100, 110), reader.read(100, 110))
    nan_inside = movie.copy()
    nan_inside[60, 10, 10] = np.nan
    with pytest.raises(InputError, match="the first at frame 60, "):
        open_movie(nan_inside, crop="7:117,3:29,3:29").read(50, 60)  # numbered as in the file
    with pytest.raises(InputError, match="not within the movie, which has 120 frames"):
        open_movie(movie, crop="7:130,3:29,3:29")
    movie[50] = 0.0  # one between measured frames: refused by number where asked to
    named = r"frame 50 of frames \d+:\d+ holds.*movie\[:50\] and movie\[51:\]"
    with pytest.raises(InputError, match=named):
        prepare(open_movie(movie, crop="auto"), calmdown.make_config(), blank_frames="error")
    # and by default read without it: frame 43 of the crop (frame 50 of the file)
    prep = prepare(open_movie(movie, crop="auto"), calmdown.make_config())
    assert prep.blank is not None and prep.blank.blank.tolist() == [43]
    assert prep.reader.shape == (109, 26, 26) and prep.shape == (110, 26, 26)
