import json

import numpy as np
import pytest
import tifffile
from scipy.ndimage import uniform_filter, uniform_filter1d
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.evaluate import estimate_gain, photon_split, split_method
from calmdown.noise import NoiseModel, estimate_noise
from calmdown.simulate import simulate

ENF = 1.25
PULSE_GAIN = 10.0
READ_NOISE = 2.0


def _pmt_counts(seed: int = 0, shape=(300, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    """Record a static scene with a PMT: Poisson photons, Gamma pulse heights, read noise.

    Returns ADU minus offset and the expected photons per pixel (constant in time).
    """
    rng = np.random.default_rng(seed)
    level = np.exp(rng.uniform(np.log(0.2), np.log(6.0), shape[1:]))
    n = rng.poisson(np.broadcast_to(level, shape))
    k = 1.0 / (ENF - 1.0)
    adu = np.zeros(shape)
    hit = n > 0
    adu[hit] = rng.standard_gamma(n[hit] * k) * PULSE_GAIN / k
    adu += READ_NOISE * rng.standard_normal(shape)
    return adu, level


def _moments(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """Mean temporal variance of each half, their correlation, and the mean of a - b."""
    da, db = a - a.mean(axis=0), b - b.mean(axis=0)
    va, vb = float(np.mean(da * da)), float(np.mean(db * db))
    return va, vb, float(np.mean(da * db) / np.sqrt(va * vb)), float(np.mean(a - b))


@pytest.mark.parametrize("unit_gain", [PULSE_GAIN * ENF, PULSE_GAIN])
def test_split_halves_are_uncorrelated_with_half_mean_and_variance(unit_gain):
    # In units of the photon-transfer gain (g * ENF) the counts are Poisson-like; in units of
    # the pulse gain g they are over-dispersed by ENF. The split must handle both.
    adu, level = _pmt_counts()
    y = adu / unit_gain
    noise = NoiseModel(gain=1.0, offset=0.0, read_noise=READ_NOISE / unit_gain)
    a, b = photon_split(y, noise, np.random.default_rng(1))
    n = np.rint(y)
    assert np.allclose(a + b, y, atol=1e-3)
    va, vb, corr, mean_diff = _moments(a.astype(np.float64), b.astype(np.float64))
    v_n = float(np.mean(y.var(axis=0)))
    assert abs(corr) < 0.006, corr
    assert va == pytest.approx(v_n / 2, rel=0.02) and vb == pytest.approx(v_n / 2, rel=0.02)
    assert abs(mean_diff) < 0.01 * float(np.mean(n))
    expected = level * PULSE_GAIN / unit_gain / 2
    assert float(np.mean(a)) == pytest.approx(float(np.mean(expected)), rel=0.02)
    # A plain binomial split of the same counts is measurably correlated.
    a0 = np.sign(n) * np.random.default_rng(1).binomial(np.abs(n).astype(np.int64), 0.5)
    corr_naive = _moments(a0, n - a0)[2]
    assert corr_naive > 0.02, corr_naive


def test_gaussian_split_decorrelates_neighbours_of_interpolated_noise():
    rng = np.random.default_rng(2)
    level = 3.0
    shape = (200, 32, 32)
    counts = rng.poisson(level, shape).astype(np.float64)
    interp = uniform_filter(counts, size=(1, 2, 2), mode="wrap")  # like a half-pixel shift
    noise = estimate_noise(lambda s, e: interp[s:e], shape[0], gain=1.0, offset=0.0, read_noise=0.0)
    assert split_method(noise) == "gaussian"
    a, b = photon_split(interp, noise, rng)
    da = a - a.mean(axis=0)
    db = b - b.mean(axis=0)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        c = np.mean(da[:, dy:, dx:] * db[:, : shape[1] - dy, : shape[2] - dx])
        assert abs(c) / np.mean(da * da) < 0.02, (dy, dx, c)
    assert np.allclose(a + b, interp, atol=1e-4)


def _box_denoiser(movie: np.ndarray) -> np.ndarray:
    return uniform_filter1d(uniform_filter(movie, size=(1, 3, 3), mode="nearest"), 7, axis=0)


def test_estimate_matches_truth_where_a_poisson_formula_fails():
    sim = simulate("dense", photons=2.0, shape=(300, 48, 48), seed=4)
    noise = estimate_noise(lambda s, e: sim.raw[s:e], sim.raw.shape[0])
    seen = {}

    def denoiser(movie: np.ndarray) -> np.ndarray:
        seen["half"], seen["out"] = movie, _box_denoiser(movie)
        return seen["out"]

    res = estimate_gain(sim.raw, noise=noise, seed=0, denoiser=denoiser)
    clean_half = (sim.clean.astype(np.float64) + noise.offset) / 2
    truth = 10 * np.log10(
        np.mean((seen["half"] - clean_half) ** 2) / np.mean((seen["out"] - clean_half) ** 2)
    )
    assert res.method == "binomial" and res.split_valid
    assert res.psnr_gain_db_sd < 0.3
    assert abs(res.psnr_gain_db - truth) < 0.4, (res.psnr_gain_db, truth)

    # The Poisson-only formula: round, split binomially, take Var(B) = mean(B).
    y = noise.to_photons(sim.raw)
    n = np.rint(y)
    a0 = np.random.default_rng(0).binomial(np.maximum(n, 0).astype(np.int64), 0.5)
    b0 = n - a0
    d0 = noise.to_photons(_box_denoiser(noise.to_adu(a0)))
    var_b = float(np.mean(b0))
    naive = 10 * np.log10(var_b / (np.mean((d0 - b0) ** 2) - var_b))
    assert abs(naive - truth) > 0.4, (naive, truth)


def test_cli_writes_json(tmp_path):
    sim = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, sim.raw.astype(np.uint16))
    out = tmp_path / "gain.json"
    res = CliRunner().invoke(
        app,
        ["evaluate", str(raw), "--json", str(out), "--max-steps", "2", "--time-budget", "30"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert np.isfinite(data["psnr_gain_db"]) and data["psnr_gain_db_sd"] > 0
    assert data["method"] == "binomial"
    assert "half the photons" in res.output
    assert not list(tmp_path.glob("*.partial"))
    assert data["frames"] == [0, 60] and data["n_frames"] == 60


def test_cli_evaluates_the_middle_of_a_long_movie(tmp_path):
    sim = simulate("dense", photons=2.0, shape=(100, 32, 32), seed=0)
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, sim.raw.astype(np.uint16))
    out = tmp_path / "gain.json"
    args = ["evaluate", str(raw), "--json", str(out), "--max-steps", "2", "--max-frames", "40"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["frames"] == [30, 70] and data["n_frames"] == 40
    assert "Frames 30:70 of 100, from the middle of the movie" in res.output


def test_raw_half_has_the_noise_of_a_recording_with_half_the_photons():
    # The split halves the read noise with the photons; a recording of half the photons keeps
    # all of it. The raw half's error must be that recording's noise variance, or dark pixels
    # (read noise is most of their noise) make the gain look better than it is.
    rng = np.random.default_rng(7)
    shape, level, read = (400, 24, 24), 0.6, 0.8
    full = rng.poisson(2 * level, shape) + read * rng.standard_normal(shape)
    half = rng.poisson(level, shape) + read * rng.standard_normal(shape)
    noise = NoiseModel(gain=1.0, offset=0.0, read_noise=read)
    seen = {}

    def identity(movie):
        seen["a"] = movie.copy()
        return movie

    res = estimate_gain(full.astype(np.float32), noise=noise, denoiser=identity, method="binomial")
    want = float(np.var(half))
    assert abs(res.mse_raw / want - 1) < 0.03
    assert abs(float(np.var(seen["a"])) / want - 1) < 0.03
    # Scoring the raw half itself: no gain.
    assert abs(res.psnr_gain_db) < 0.1


def test_cli_leaves_blank_frames_out_of_the_split_and_the_scores(tmp_path):
    movie = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0).raw.astype(np.uint16)
    movie[[20, 21, 45]] = 0  # dropped frames: scored, they would read as denoised perfectly
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, movie)
    out = tmp_path / "gain.json"
    args = ["evaluate", str(raw), "--json", str(out), "--max-steps", "2", "--time-budget", "30"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["blank_frames_left_out"] == [20, 21, 45] and data["n_frames"] == 57
    assert "Frames 20-21, 45 are blank" in res.output
