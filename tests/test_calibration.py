"""The final, stratified variance calibration and the memorisation check."""

import numpy as np
import pytest
import torch

from calmdown.calibration import (
    CalibrationStages,
    StratifiedCalibration,
    bin_index,
    calibration_resolution,
    fit_level_stage,
    fit_stratified_calibration,
    temporal_change,
    timing_variance,
)
from calmdown.noise import NoiseModel
from calmdown.pipeline import _fitted_pixels, _memorisation_check


def _movie(seed: int, shape=(400, 48, 48), noise_var: float = 1.0):
    """Make a prior whose claimed variance is right where quiet, 4x too small where active."""
    rng = np.random.default_rng(seed)
    level = torch.from_numpy(rng.uniform(0.5, 2.0, shape[1:]).astype(np.float32))
    active = torch.from_numpy(rng.random(shape) < 0.15)
    claimed = torch.full(shape, 0.04)
    # The prior departs from the mean image where active (what the data show) ...
    loc = level + torch.where(active, torch.tensor(1.5), torch.tensor(0.0))
    # ... and errs more there than it claims.
    true_var = torch.where(active, 4 * claimed, claimed)
    g = torch.Generator().manual_seed(seed)
    clean = loc + torch.randn(shape, generator=g) * true_var.sqrt()
    x = clean + torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * noise_var**0.5
    raw_nv = torch.full(shape, noise_var)
    return x, loc, claimed, raw_nv, level, clean, active


def _coverage(loc, var, clean, mask):
    return float(((clean - loc).abs() <= 1.645 * var.sqrt())[mask].float().mean())


def test_active_pixels_get_the_variance_their_residuals_show():
    x, loc, claimed, raw_nv, level, _, _ = _movie(0)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    stage = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, target, None)], feature="activity"
    )
    # Fresh data from the same process: coverage of the truth, by the prior alone.
    _, loc2, claimed2, _, level2, clean2, active2 = _movie(1)
    before = _coverage(loc2, claimed2, clean2, active2)
    fitted = stage.apply(claimed2, loc2, level2)
    assert before < 0.65
    assert 0.86 <= _coverage(loc2, fitted, clean2, active2) <= 0.94
    assert 0.86 <= _coverage(loc2, fitted, clean2, ~active2) <= 0.94


def test_factors_lost_in_the_noise_stay_near_one():
    # Same prior errors, but noise 400x their variance: too few pixels to see them. A row's own
    # estimate then counts by its precision against the overall factor's (here 1: lost too),
    # so the noise moves the factors only by a few percent (the row estimates' standard errors
    # are several times 1).
    x, loc, claimed, raw_nv, level, _, _ = _movie(2, shape=(20, 32, 32), noise_var=16.0)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    stage = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, target, None)], feature="activity"
    )
    factors = np.asarray(stage.factors)
    assert np.abs(factors - 1.0).max() < 0.05, factors
    # Four times the noise: the estimates are worth a sixteenth as much, the factors move less.
    x, loc, claimed, raw_nv, level, _, _ = _movie(2, shape=(20, 32, 32), noise_var=64.0)
    quieter = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, target, None)], feature="activity"
    )
    assert np.abs(np.asarray(quieter.factors) - 1.0).max() < np.abs(factors - 1.0).max()


def test_a_large_error_pooled_over_rows_lost_in_the_noise_is_seen():
    # Too few pixels per brightness row to fix any row's factor to 25 %, but the active
    # pixels' error (4x what is claimed), pooled over the rows, stands out of the noise. A
    # constant factor per row (the fit before the rows shared multipliers) left them covering
    # 0.63 here, and the claimed variance 0.59.
    x, loc, claimed, raw_nv, level, _, _ = _movie(5, shape=(30, 32, 32))
    target = torch.ones(x.shape[0], dtype=torch.bool)
    stage = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, target, None)], feature="activity"
    )
    _, loc2, claimed2, _, level2, clean2, active2 = _movie(6, shape=(30, 32, 32))
    fitted = stage.apply(claimed2, loc2, level2)
    assert _coverage(loc2, claimed2, clean2, active2) < 0.65
    assert _coverage(loc2, fitted, clean2, active2) >= 0.8
    factors = np.asarray(stage.factors)
    assert (factors[:, -1] / factors[:, 0] > 2).all(), factors


def test_identity_and_round_trip():
    var = torch.rand(3, 4, 4) + 0.1
    loc, level = torch.rand(3, 4, 4), torch.rand(4, 4)
    assert torch.equal(StratifiedCalibration.identity().apply(var, loc, level), var)
    x, loc, claimed, raw_nv, level, _, _ = _movie(3, shape=(50, 16, 16))
    stage = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, torch.ones(50, dtype=torch.bool), None)],
        feature="activity",
    )
    again = StratifiedCalibration(**stage.to_dict())
    assert torch.equal(again.apply(claimed, loc, level), stage.apply(claimed, loc, level))
    # A format 3 model file's single stage reads as one stage; stages round-trip.
    stages = CalibrationStages.from_dict(stage.to_dict())
    assert torch.equal(stages.apply(claimed, loc, level), stage.apply(claimed, loc, level))
    both = CalibrationStages([stage, stage])
    assert torch.equal(
        CalibrationStages.from_dict(both.to_dict()).apply(claimed, loc, level),
        stage.apply(stage.apply(claimed, loc, level), loc, level),
    )


def test_temporal_change_leaves_out_the_frame_itself():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 12, 12, generator=g)
    change = temporal_change(x)
    y = x.clone()
    y[10] += 5.0 * torch.rand(12, 12, generator=g)
    again = temporal_change(y)
    assert torch.equal(again[10], change[10])
    assert not torch.allclose(again[9], change[9], atol=1e-3)
    # A step up of 2 between frames 9 and 10 reads as 2 at frame 9 (three frames each side).
    step = torch.zeros(20, 8, 8)
    step[10:] = 2.0
    assert torch.allclose(temporal_change(step)[9], torch.full((8, 8), 2.0))
    assert torch.allclose(temporal_change(step)[2], torch.zeros(8, 8))


def test_timing_variance_is_half_the_prior_step_squared_and_chunk_free():
    # The prior steps up by 4 between frames 9 and 10: frames 9 and 10 cannot place the step,
    # (4 / 2)^2 = 4 each; the other frames, and the ends (no neighbour), none.
    loc = torch.zeros(20, 6, 6)
    loc[10:] = 4.0
    var = timing_variance(loc, slice(None), 1.0)
    assert var.shape == loc.shape
    assert torch.equal(var[9], torch.full((6, 6), 4.0)) and torch.equal(var[10], var[9])
    assert float(var[:9].abs().max()) == 0 and float(var[11:].abs().max()) == 0
    assert float(timing_variance(loc, slice(None), 0.5)[9, 0, 0]) == 2.0
    # Frames asked for are those of the whole run, to the bit, wherever they start.
    g = torch.Generator().manual_seed(2)
    loc = torch.rand(30, 8, 8, generator=g) * 5
    whole = timing_variance(loc, slice(None), 1.0)
    assert torch.equal(timing_variance(loc, slice(7, 19), 1.0), whole[7:19])
    assert torch.equal(timing_variance(loc[6:20], slice(1, 13), 1.0), whole[7:19])
    assert float(whole[0].abs().max()) == 0 and float(whole[-1].abs().max()) == 0


def test_fast_changing_pixels_get_the_variance_their_residuals_show():
    # The prior errs 5x more (in variance) in the frames around a step of the data than it
    # claims, and is right elsewhere; the change stage finds it without ground truth.
    def movie(seed):
        rng = np.random.default_rng(seed)
        shape = (300, 32, 32)
        level = torch.ones(shape[1:])
        steps = np.zeros(shape, np.float32)
        for start in range(5, 300, 30):  # a step up for ten frames, every 30 frames
            steps[start : start + 10] = 3.0
        sig = torch.from_numpy(steps) + level
        moving = temporal_change(sig) > 0.5
        claimed = torch.full(shape, 0.04)
        true_var = torch.where(moving, 5 * claimed, claimed)
        clean = sig + torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * 0.2
        loc = clean + torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) * (
            true_var.sqrt()
        )
        x = clean + torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        return x, loc, claimed, torch.ones(shape), level, clean, moving

    x, loc, claimed, raw_nv, level, _, _ = movie(0)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    stage = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, target, temporal_change(x))], feature="change"
    )
    x2, loc2, claimed2, _, level2, clean2, moving2 = movie(1)
    fitted = stage.apply(claimed2, loc2, level2, temporal_change(x2))
    assert _coverage(loc2, claimed2, clean2, moving2) < 0.65
    assert 0.85 <= _coverage(loc2, fitted, clean2, moving2) <= 0.95
    assert 0.85 <= _coverage(loc2, fitted, clean2, ~moving2) <= 0.95


def _parts(err_sd: float, seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(n):
        shape = (40, 32, 32)
        clean = torch.full(shape, 4.0)
        x = torch.poisson(clean, generator=g)
        loc = clean + torch.randn(shape, generator=g) * err_sd
        var = torch.full(shape, 0.25)  # claimed prior variance (sd 0.5)
        target = torch.ones(shape[0], dtype=torch.bool)
        parts.append((x, loc, var, target, torch.zeros(shape), clean))
    return parts


def test_memorised_training_frames_are_not_used():
    noise = NoiseModel(gain=1.0, offset=0.0, read_noise=0.0)
    held = _parts(0.5, seed=1)
    honest = _parts(0.5, seed=2)
    # A network that memorised its targets' noise predicts them far too well.
    memorised = [(p[0], p[0] + 0.05 * (p[1] - p[0]), *p[2:]) for p in _parts(0.5, seed=3)]
    assert not _memorisation_check(held, honest, noise)["memorised"]
    report = _memorisation_check(held, memorised, noise)
    assert report["memorised"] and report["trained_frames_used"] == 0


def test_a_poorly_determined_row_keeps_a_factor_its_own_data_allow():
    # A dim row whose prior error is a small part of the noise cannot be fitted to 25 %; it
    # falls back to the overall factor, which the bright row sets (about 2 here). Its own data
    # put its factor near 0.3, so the fallback must stay within their reach.
    from calmdown.calibration import fit_stratified_calibration

    rng = np.random.default_rng(0)
    n = 20_000
    level = torch.from_numpy(np.repeat([1.0, 2.0, 3.0], n).astype(np.float32))[None]
    var = torch.from_numpy(np.repeat([0.05, 1.0, 1.0], n).astype(np.float32))[None]
    f_true = np.repeat([0.3, 2.0, 2.0], n)
    err = rng.standard_normal(3 * n) * np.sqrt(f_true * var.numpy()[0])
    x = torch.from_numpy((err + rng.standard_normal(3 * n)).astype(np.float32))[None]
    frames = torch.ones(1, dtype=torch.bool)
    zeros = torch.zeros_like(x)
    part = (x, zeros, var, torch.ones_like(x), level, frames, zeros)
    stage = fit_stratified_calibration([part], feature="change", activity_edges=(1.0,))
    dim, bright = stage.factors[0], stage.factors[-1]
    assert 1.6 < bright[0] < 2.4
    assert max(dim) < 1.0


def _resting_errs_more(seed: int, shape=(300, 48, 48)):
    """Make a prior that errs 4x its claim near the mean image and as claimed far from it.

    Bright cells at rest: the prior's timing of small departures is off, while large
    departures (clear transients) are tracked; an order-imposing fit cannot follow this.
    """
    rng = np.random.default_rng(seed)
    level = torch.from_numpy(rng.uniform(4.0, 8.0, shape[1:]).astype(np.float32))
    far = torch.from_numpy(rng.random(shape) < 0.5)
    claimed = torch.full(shape, 0.05)
    loc = level + torch.where(far, torch.tensor(3.0), torch.tensor(0.05))
    true_var = torch.where(far, claimed, 4 * claimed)
    g = torch.Generator().manual_seed(seed)
    clean = loc + torch.randn(shape, generator=g) * true_var.sqrt()
    x = clean + torch.randn(shape, generator=g)
    return x, loc, claimed, torch.ones(shape), level, clean, far


def test_deviation_stage_follows_an_error_that_falls_with_the_deviation():
    x, loc, claimed, raw_nv, level, _, _ = _resting_errs_more(0)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    part = [(x, loc, claimed, raw_nv, level, target, None)]
    stage = fit_stratified_calibration(part, feature="deviation")
    monotone = fit_stratified_calibration(part, feature="activity")
    _, loc2, claimed2, _, level2, clean2, far2 = _resting_errs_more(1)
    fitted = stage.apply(claimed2, loc2, level2)
    for group in (far2, ~far2):
        assert 0.86 <= _coverage(loc2, fitted, clean2, group) <= 0.94
    # The non-decreasing fit in the activity pools both groups: one of them is off.
    pooled = monotone.apply(claimed2, loc2, level2)
    worst = min(_coverage(loc2, pooled, clean2, g) for g in (far2, ~far2))
    assert worst < 0.85
    again = StratifiedCalibration(**stage.to_dict())
    assert torch.equal(again.apply(claimed2, loc2, level2), fitted)


@pytest.mark.parametrize("edges", [[], [0.5], [0.25, 0.5, 1.0, 1.5, 2.0, 3.0], [1.0, 1.0, 2.0]])
def test_bin_index_matches_bucketize_edges_included(edges):
    x = torch.linspace(-1, 6, 2001)
    x = torch.cat([x, torch.tensor(edges, dtype=x.dtype)])  # values on an edge go to the lower bin
    expected = torch.bucketize(x, torch.tensor(edges, dtype=x.dtype))
    assert torch.equal(bin_index(x, edges), expected)


@pytest.mark.parametrize("feature", ["change", "activity", "deviation"])
def test_stages_fitted_on_the_kept_pixels_alone_are_the_same(feature):
    # The calibration keeps each run's stage inputs at its fitted pixels only (memory); the
    # fit must not change.
    x, loc, claimed, raw_nv, level, _, active = _movie(3, shape=(60, 32, 32))
    change = temporal_change(x)
    fit = torch.ones(x.shape[0], dtype=torch.bool)[:, None, None] & ~(active & (x > loc + 2))
    fit[:5] = False  # frames that only serve as neighbours
    timing = 3 * claimed * active
    whole = fit_stratified_calibration(
        [(x, loc, claimed, raw_nv, level, fit, change, timing)], feature=feature
    )
    kept = fit_stratified_calibration(
        [_fitted_pixels(x, loc, claimed, raw_nv, level, fit, change, unbinned=timing)],
        feature=feature,
    )
    assert kept.to_dict() == whole.to_dict()


def test_scale_calibration_summed_in_blocks_is_the_one_summed_at_once(monkeypatch):
    import calmdown.calibration as cal

    rng = np.random.default_rng(4)
    n = 2_500_000  # three blocks
    claimed = rng.gamma(2.0, 0.01, n).astype(np.float32)
    x = (rng.standard_normal(n) * np.sqrt(claimed * 3 + 1.0)).astype(np.float32)
    args = (claimed, x**2, np.ones(n, np.float32))
    known = np.full(n, 0.001, np.float32)
    blocks = cal.fit_scale_calibration(*args, known_var=known, n_bins=5)
    monkeypatch.setattr(cal, "_SUM_BLOCK", 10 * n)
    whole = cal.fit_scale_calibration(*args, known_var=known, n_bins=5)
    assert blocks.edges == whole.edges
    np.testing.assert_allclose(blocks.factors, whole.factors, rtol=1e-9)
    assert 2.0 < np.mean(blocks.factors) < 4.0  # the claimed variance is a third of the error's


def test_the_brightest_tenth_gets_a_row_of_its_own():
    """Cells of a sparse movie, the brightest tenth, get the variance their residuals show.

    Their prior errs more than the background's; a row for the top third would mix them with
    background pixels and leave them under-covered.
    """
    shape = (300, 40, 40)
    rng = np.random.default_rng(0)
    level = torch.from_numpy(rng.uniform(0.5, 2.0, shape[1:]).astype(np.float32))
    cells = level > float(np.quantile(level.numpy(), 0.9))
    claimed = torch.full(shape, 0.1)
    true_var = torch.where(cells, 3 * claimed, claimed)
    g = torch.Generator().manual_seed(0)

    def draw():
        clean = level + torch.randn(shape, generator=g) * true_var.sqrt()
        return clean, clean + torch.randn(shape, generator=g) * 0.5

    _, x = draw()
    target = torch.ones(shape[0], dtype=torch.bool)
    part = (x, level.expand(shape), claimed, torch.full(shape, 0.25), level, target, None)
    stage = fit_stratified_calibration([part], feature="activity")
    clean, _ = draw()
    fitted = stage.apply(claimed, level.expand(shape), level)
    mask = cells.expand(shape)
    assert _coverage(level.expand(shape), claimed, clean, mask) < 0.7
    assert 0.86 <= _coverage(level.expand(shape), fitted, clean, mask) <= 0.94
    assert 0.86 <= _coverage(level.expand(shape), fitted, clean, ~mask) <= 0.94


def test_resolution_says_how_well_residuals_measure_the_prior_spread():
    # A factor on the prior's variance fitted from n pixels whose error is a share s of the
    # noise variance is known to sqrt(2 / n) / s of itself: poorly at a few photons. Two
    # brightness groups here, the brighter with four times the prior's variance.
    n = 40_000
    level = torch.cat([torch.full((n,), 1.0), torch.full((n,), 4.0)])
    var = torch.cat([torch.full((n,), 0.01), torch.full((n,), 0.04)])
    nv = torch.ones(2 * n)
    x = torch.zeros(2 * n)
    parts = [(x, x, var, nv, level, torch.ones(2 * n, dtype=torch.bool), x)]
    res = calibration_resolution(parts, level_quantiles=(0.5,))
    assert res["prior_error_share"] == pytest.approx(0.025)
    assert res["scale_se"] == pytest.approx(np.sqrt(2 * 2 * n) / (n * 0.05))
    dim, bright = res["row_scale_se"]
    assert dim == pytest.approx(np.sqrt(2 * n) / (n * 0.01))
    assert bright == pytest.approx(dim / 4)
    # Pooled, the dim pixels add noise but little of the prior's error: better than the dim
    # group alone, not than the bright one.
    assert bright < res["scale_se"] < dim


def test_bins_by_a_variance_free_of_the_pixels_own_noise():
    # The timing term reads the prior at t - 1 and t + 1, which saw frame t's value: it is
    # larger where that value's noise is. Here it is the active pixels' missing error variance
    # (3x the claimed), right on average but times the squared noise of the pixel itself.
    def movie(seed: int):
        x, loc, claimed, raw_nv, level, clean, active = _movie(seed)
        noise = (x - clean) / raw_nv.sqrt()
        timing = torch.where(active, 3 * claimed, torch.zeros_like(claimed)) * noise**2
        return x, loc, claimed, raw_nv, level, clean, active, timing

    x, loc, claimed, raw_nv, level, _, _, timing = movie(0)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    apart = CalibrationStages(
        [
            fit_stratified_calibration(
                [(x, loc, claimed, raw_nv, level, target, None, timing)], feature="activity"
            )
        ]
    )
    binned = fit_stratified_calibration(
        [(x, loc, claimed + timing, raw_nv, level, target, None)], feature="activity"
    )
    _, loc2, claimed2, _, level2, clean2, active2, timing2 = movie(1)
    err2 = (clean2 - loc2) ** 2

    def level_of(var: torch.Tensor) -> float:
        return float(var[active2].sum() / err2[active2].sum())

    # Binned by the rest, the active pixels' stated variance is their error's ...
    assert 0.9 <= level_of(apart.apply(claimed2, loc2, level2, unbinned=timing2)) <= 1.1
    # ... binned by the whole, the term sorts the pixels into the bins by their own noise,
    # and the factors read from those bins state several times the error.
    assert level_of(binned.apply(claimed2 + timing2, loc2, level2)) > 2.0


def test_the_level_stage_brings_the_summed_variance_to_the_summed_excess():
    x, loc, claimed, raw_nv, level, _, _ = _movie(7, noise_var=0.25)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    # Stated uniformly 0.8x of the error: 15 % of the pixels err 4x the claimed, the rest 1x,
    # 1.45x on average. The residuals measure the level to +-0.8 %.
    stated = 0.8 * 1.45 * claimed
    stage = fit_level_stage([(x, loc, stated, raw_nv, level, target, None)])
    assert stage.factors[0][0] == pytest.approx(1 / 0.8, rel=0.05)
    # Lost in the noise (400x the prior's error, few pixels): it stays near 1.
    x, loc, claimed, raw_nv, level, _, _ = _movie(8, shape=(20, 32, 32), noise_var=400.0)
    target = torch.ones(x.shape[0], dtype=torch.bool)
    stage = fit_level_stage([(x, loc, claimed * 0.5, raw_nv, level, target, None)])
    assert abs(stage.factors[0][0] - 1.0) < 0.1
