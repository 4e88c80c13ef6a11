"""calmdown must not invent time-varying structure in a movie where nothing happens.

On movies with no signal (flat, or a static image) the truth never changes, so every temporal
fluctuation of the denoised movie is error. Two statistics, against the truth:

* ``fine``: temporal variance of ``denoised - clean`` per pixel, over the raw noise variance;
* ``coherent``: the same after a Gaussian blur of 2 pixels. Blurring cancels pixel noise and
  keeps blobs, so this measures time-varying structure at the scale of cells. Any averaging of
  the data has ``coherent <= 1``; a 5-frame moving average has 0.2.

and the report's data-only check (:func:`calmdown.report.diagnostics.hallucination_check`),
which must agree. A fake denoiser that adds smooth moving blobs (faint per pixel) to the truth
must fail both; calmdown must pass both.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from scipy import ndimage

import calmdown
from calmdown.report.diagnostics import TemporalStats, hallucination_check, quiet_pixels
from calmdown.simulate import SimulatedMovie

SHAPE = (160, 40, 40)
# A small network and few steps keep the test fast; the guarantees must hold for it too.
FAST = {
    "time_budget_s": 8,
    "max_steps": 30,
    "val_every": 10,
    "width": 8,
    "batch_size": 4,
    "patch_size": 32,
    "threads": 1,
    "device": "cpu",
    "seed": 0,
}


def _truth_ratios(est: np.ndarray, sim: SimulatedMovie) -> tuple[float, float]:
    err = est.astype(np.float64) - sim.clean
    noise = sim.raw.astype(np.float64) - sim.clean

    def blur(v: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(v, (0, 2, 2))

    fine = float(np.mean(np.var(err, axis=0)) / np.mean(np.var(noise, axis=0)))
    coherent = float(np.mean(np.var(blur(err), axis=0)) / np.mean(np.var(blur(noise), axis=0)))
    return fine, coherent


def _data_check(est: np.ndarray, sim: SimulatedMovie) -> dict:
    gain, offset = sim.detector.conversion_gain, sim.detector.offset
    stats = TemporalStats(sim.raw.shape[1:])
    for start in range(0, sim.raw.shape[0], 64):
        stats.add(
            (sim.raw[start : start + 64] - offset) / gain, (est[start : start + 64] - offset) / gain
        )
    summary = stats.finish()
    quiet, _ = quiet_pixels(summary)
    return hallucination_check(summary, quiet)


def _moving_blobs(sim: SimulatedMovie, amplitude_sd: float, seed: int = 1) -> np.ndarray:
    """Truth plus Gaussian blobs (sigma 3 px) that drift about 1 px per frame."""
    n_t, h, w = sim.raw.shape
    rng = np.random.default_rng(seed)
    sd = float(np.std(sim.raw - sim.clean))
    yy, xx = np.mgrid[:h, :w]
    blobs = np.zeros(sim.raw.shape, np.float32)
    for _ in range(8):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        vy, vx = rng.normal(0, 1.0, 2)
        for t in range(n_t):
            cy, cx = (y + vy * t) % h, (x + vx * t) % w
            blobs[t] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return sim.clean + amplitude_sd * sd * blobs


@pytest.fixture(scope="module", params=["noise", "static"])
def case(request):
    sim = calmdown.simulate(request.param, photons=2.0, shape=SHAPE, seed=0)
    # A flat movie has one brightness: the photon-transfer gain is poorly determined (warned).
    flat = request.param == "noise"
    with pytest.warns(UserWarning, match="poorly determined") if flat else nullcontext():
        den = calmdown.denoise(sim.raw, **FAST)
    return sim, den


def test_calmdown_invents_no_structure(case):
    sim, den = case
    raw_before = sim.raw.copy()
    fine, coherent = _truth_ratios(den, sim)
    assert fine < 0.05, fine  # far below the raw noise variance
    assert coherent < 0.2, coherent  # below even a 5-frame moving average's
    check = _data_check(den, sim)
    assert check["verdict"] == "pass", check["message"]
    assert check["ratio"] < 0.2
    np.testing.assert_array_equal(sim.raw, raw_before)


def test_fake_hallucinator_fails(case):
    sim, _ = case
    fake = _moving_blobs(sim, amplitude_sd=1.0)
    fine, coherent = _truth_ratios(fake, sim)
    # Faint pixel by pixel (a quarter of the noise variance), strong at the scale of cells.
    assert fine < 0.3
    assert coherent > 1.0
    check = _data_check(fake, sim)
    assert check["verdict"] == "fail"
    assert "FAIL" in str(check["message"])


def test_moving_average_is_averaging_not_invention(case):
    sim, _ = case
    ma = ndimage.uniform_filter1d(sim.raw, 5, axis=0, mode="nearest")
    check = _data_check(ma, sim)
    assert check["verdict"] == "pass"
    assert 0.12 < check["ratio"] < 0.25  # 1/5 in theory
