import numpy as np
import pytest
import torch
from scipy import stats

from calmdown.calibration import predictive_check
from calmdown.config import GuardConfig
from calmdown.posterior import (
    GuardedPosterior,
    GuardOutput,
    gaussian_posterior,
    guarded_posterior,
    predictive_pit,
    surprise_guard,
)


def test_posterior_lies_between_prior_and_data_and_is_narrower():
    x = torch.tensor([5.0, -1.0])
    loc = torch.tensor([1.0, 1.0])
    pv = torch.tensor([0.5, 2.0])
    nv = torch.tensor([1.0, 1.0])
    mean, var = gaussian_posterior(x, loc, pv, nv)
    assert torch.all((mean - loc) * (x - loc) > 0) and torch.all((mean - x) * (loc - x) > 0)
    assert torch.all(var < pv) and torch.all(var < nv)
    torch.testing.assert_close(mean, loc + pv / (pv + nv) * (x - loc))


def _noise_movie(seed=0, shape=(60, 24, 24), level=1.0):
    rng = np.random.default_rng(seed)
    loc = torch.full(shape, level)
    x = torch.from_numpy(rng.poisson(level, shape).astype(np.float32))
    return x, loc, torch.full(shape, 0.01), torch.full(shape, level)


def test_guard_stays_quiet_on_noise():
    x, loc, pv, nv = _noise_movie()
    out = surprise_guard(x, loc, pv, nv, GuardConfig())
    assert float(out.p_surprise.mean()) < 0.01
    assert float((out.loc - loc).abs().mean()) < 0.02


def test_guard_hands_a_clear_event_back_to_the_data():
    x, loc, pv, nv = _noise_movie(seed=1)
    rng = np.random.default_rng(2)
    event = torch.zeros_like(x)
    event[20:40, 10:13, 10:13] = 2.0  # 2 photons over a 3x3x20 support: z ~ 27
    x = x + torch.from_numpy(rng.poisson(event.numpy()).astype(np.float32))
    out = surprise_guard(x, loc, pv, nv + event, GuardConfig())
    inside = (slice(22, 38), slice(10, 13), slice(10, 13))
    kept = float((out.loc - loc)[inside].mean()) / 2.0
    assert kept > 0.8
    assert float(out.p_surprise[inside].mean()) > 0.9
    # Where the data decide, the prior's variance grows to match.
    assert float(out.var[inside].mean()) > 5 * float(pv[inside].mean())


def test_window_helpers_match_brute_force():
    from calmdown.posterior import window_count, window_sum

    def _box(x, frames, pixels):
        return window_sum(x, frames, pixels) / window_count(
            tuple(x.shape), frames, pixels, x.device
        )

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((9, 6, 7), dtype=np.float32))
    box = _box(x, 5, 3)
    a = x.numpy()
    for t, y, z in [(0, 0, 0), (4, 3, 3), (8, 5, 6), (1, 2, 0)]:
        win = a[max(t - 2, 0) : t + 3, max(y - 1, 0) : y + 2, max(z - 1, 0) : z + 2]
        assert abs(float(box[t, y, z]) - win.mean()) < 1e-5
    # Windows longer than the movie shrink instead of failing.
    assert _box(x[:2], 31, 3).shape == (2, 6, 7)


@pytest.mark.parametrize(
    "cfg",
    [
        GuardConfig(),
        GuardConfig(window_frames=3, pixel_windows=(3,), line_frames=5),
        GuardConfig(local_pixels=3),
    ],
    ids=["default", "windows shorter than the local frames", "local window 3 pixels wide"],
)
def test_guarded_prior_holds_no_noise_of_the_pixels_own_frame(cfg):
    # The pixel's value enters the posterior through the likelihood only; a guarded prior
    # that saw it would count it twice and bias every check made on held-out residuals.
    x, loc, pv, nv = _noise_movie(seed=4)
    x[20:40, 10:13, 10:13] += 3.0  # a clear event, so the guard acts here
    before = surprise_guard(x, loc, pv, nv, cfg)
    assert float(before.p_surprise[30, 11, 11]) > 0.9
    x2 = x.clone()
    x2[30, 11, 11] += 40.0
    after = surprise_guard(x2, loc, pv, nv, cfg)
    for field in ("loc", "var", "p_surprise"):
        a, b = getattr(before, field)[30, 11, 11], getattr(after, field)[30, 11, 11]
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), field
    # Other frames do see the change.
    assert not torch.allclose(before.loc[31, 11, 11], after.loc[31, 11, 11])


def _blurred_process_event(seed, amplitude=2.0):
    """Simulate an event on a thin process (7 px, 15 frames) that the prior half sees, blurred.

    Residual pattern of a context prior on a thin process: the event's pixels are too low by
    ``amplitude`` and the columns either side too high by half of it (the prior smeared the
    event it saw in the context frames into them).
    """
    x, loc, pv, nv = _noise_movie(seed=seed, shape=(80, 24, 24))
    rng = np.random.default_rng(seed + 100)
    clean = loc.clone()
    t = torch.arange(30, 45)
    course = amplitude * torch.exp(-(t - 30).float() / 12.0)
    clean[30:45, 8:15, 12] += course[:, None]
    loc = loc.clone()
    loc[30:45, 8:15, 11] += course[:, None] / 2
    loc[30:45, 8:15, 13] += course[:, None] / 2
    x = torch.from_numpy(rng.poisson(clean.numpy()).astype(np.float32))
    return x, loc, pv, nv, clean


def test_guard_sees_an_event_the_prior_blurred_into_the_process_neighbours():
    # In a square window the event's excess and its neighbours' deficit cancel; windows of the
    # pixel alone or along the process keep it.
    square_only = GuardConfig(pixel_windows=(), line_pixels=1)
    seen, seen_square = [], []
    for seed in range(4):
        x, loc, pv, nv, _ = _blurred_process_event(seed)
        inside = (slice(32, 42), slice(9, 14), 12)
        seen.append(float(surprise_guard(x, loc, pv, nv, GuardConfig()).p_surprise[inside].mean()))
        seen_square.append(
            float(surprise_guard(x, loc, pv, nv, square_only).p_surprise[inside].mean())
        )
    assert np.mean(seen) > 0.9
    assert np.mean(seen_square) < 0.1


def test_posterior_interval_holds_an_event_the_prior_missed():
    # Where the guard hands a pixel to the data, the interval must hold the event's course
    # (its rise and decay), not only its average over the local frames.
    hits = []
    for seed in range(4):
        x, loc, pv, nv, clean = _blurred_process_event(seed, amplitude=3.0)
        g = surprise_guard(x, loc, pv, nv, GuardConfig())
        mean, var = gaussian_posterior(x, g.loc, g.var, torch.clamp(g.loc, min=0.05))
        half = 1.6449 * torch.sqrt(var)
        inside = (slice(30, 45), slice(8, 15), 12)
        hits.append(((clean - mean).abs() <= half)[inside].float().mean().item())
    assert np.mean(hits) >= 0.85


def test_evidence_holds_none_of_the_pixels_own_noise_where_registration_correlated_it():
    # After registration a pixel's noise is shared with its neighbours, whose values in frame
    # t the evidence windows keep: what the pixel's own noise predicts of theirs is taken out,
    # so the evidence at a pixel is uncorrelated with its own noise (a guard that read it
    # would count the pixel's value twice, and bias the held-out checks).
    from calmdown.posterior import evidence_windows, evidence_zscores

    rng = np.random.default_rng(8)
    c = 0.5  # each axis a moving average of two: neighbour correlation c / (1 + c^2) = 0.4
    white = rng.standard_normal((40, 65, 65)).astype(np.float32)
    mixed = white[:, :-1] + c * white[:, 1:]
    noise = (mixed[:, :, :-1] + c * mixed[:, :, 1:]) / (1 + c**2)
    rho = c / (1 + c**2)
    resid = torch.from_numpy(noise)
    var = torch.ones_like(resid)
    cfg = GuardConfig(window_frames=3)
    square = [w for w in evidence_windows(cfg) if w.square == 3]
    own = noise[5:-5, 2:-2, 2:-2].ravel()
    corr = {}
    for label, nc in (("ignored", (0.0, 0.0)), ("taken out", (rho, rho))):
        (z,) = evidence_zscores(resid, var, cfg, square, noise_correlation=nc)
        corr[label] = np.corrcoef(z.numpy()[5:-5, 2:-2, 2:-2].ravel(), own)[0, 1]
    assert corr["ignored"] > 0.1
    assert abs(corr["taken out"]) < 0.02


def test_each_evidence_window_is_a_unit_z_score_on_noise():
    from calmdown.posterior import evidence_windows, evidence_zscores

    x, loc, pv, nv = _noise_movie(seed=5, shape=(200, 32, 32))
    cfg = GuardConfig()
    zs = evidence_zscores(x - loc, pv + nv, cfg)
    assert len(zs) == len(evidence_windows(cfg)) == 6
    for z in zs:
        inner = z[20:-20, 4:-4, 4:-4]
        assert abs(float(inner.mean())) < 0.05
        assert 0.9 < float(inner.std()) < 1.1


@pytest.mark.parametrize("noise_correlation", [(0.0, 0.0), (0.3, 0.2)])
def test_evidence_windows_match_brute_force(noise_correlation):
    # Each window centred within the local frames, the pixel's own value in frame t left out
    # only where the window holds frame t (its neighbours' values in frame t stay).
    from calmdown.posterior import _shifted_z2, _window_sums, evidence_windows

    rng = np.random.default_rng(6)
    resid = torch.from_numpy(rng.standard_normal((12, 7, 7)).astype(np.float32))
    var = torch.from_numpy(rng.uniform(0.5, 2.0, (12, 7, 7)).astype(np.float32))
    cfg = GuardConfig(window_frames=3, pixel_windows=(5,), line_frames=3, line_pixels=3)
    r, v = resid.numpy(), var.numpy()
    for window in evidence_windows(cfg):
        sums = _window_sums(resid, var, window)
        foot = window.offsets or [
            (dy, dx)
            for dy in range(-(window.square // 2), window.square // 2 + 1)
            for dx in range(-(window.square // 2), window.square // 2 + 1)
        ]
        h = window.frames // 2
        for dt in (-4, -1, 0, 2, 4):
            weight = window.own_weight(0, 0, noise_correlation)
            span, z2 = _shifted_z2(
                sums, window.frames, dt, own_weight=weight, one_pixel=window.one_pixel
            )
            for t, y, x in [(5, 3, 3), (6, 0, 6), (span.start, 1, 2)]:
                if not span.start <= t < span.stop:
                    continue
                c = t + dt
                frames = range(max(c - h, 0), min(c + h, 11) + 1)
                cells = [
                    (u, y + dy, x + dx)
                    for u in frames
                    for dy, dx in foot
                    if 0 <= y + dy < 7 and 0 <= x + dx < 7 and (u, dy, dx) != (t, 0, 0)
                ]
                # Less what the pixel's own noise predicts of its neighbours' in frame t.
                ry, rx = noise_correlation
                near = [(dy, dx) for dy, dx in foot if (dy, dx) != (0, 0)]
                beta = sum(
                    (ry if dy else 1.0) * (rx if dx else 1.0)
                    for dy, dx in near
                    if abs(dy) <= 1 and abs(dx) <= 1
                )
                own = beta * r[t, y, x] if abs(dt) <= h else 0.0
                total = sum(r[i] for i in cells) - own
                want = total**2 / sum(v[i] for i in cells) if cells else 0.0
                got = float(z2[t - span.start, y, x])
                assert abs(got - want) < 1e-3 * max(1.0, want), (window.name, dt, t)


def test_a_wider_local_window_takes_the_largest_evidence_over_more_windows():
    # Each pixel is handed to the data by the strongest window centred within its local
    # window; a local window 3 pixels wide looks at a superset of those centred on it alone.
    x, loc, pv, nv = _noise_movie(seed=8)
    x[20:40, 10:13, 10:13] += 1.5
    narrow = surprise_guard(x, loc, pv, nv, GuardConfig()).p_surprise
    wide = surprise_guard(x, loc, pv, nv, GuardConfig(local_pixels=3)).p_surprise
    assert torch.all(wide >= narrow - 1e-6)
    # Just outside the event, windows centred on the event's edge now count.
    assert float(wide[25:35, 9, 10:13].mean()) > float(narrow[25:35, 9, 10:13].mean())


def test_guard_over_some_frames_equals_those_frames_of_the_whole_run():
    # Inference asks the guard only for the frames the next step reads; the windows still
    # read the frames around them, so the result is that of a run over every frame.
    x, loc, pv, nv = _noise_movie(seed=4, shape=(70, 20, 20))
    x[30:40, 8:11, 8:11] += 3.0  # an event, so that the guard acts somewhere
    cfg = GuardConfig()
    whole = surprise_guard(x, loc, pv, nv, cfg, null_scale=1.3)
    for frames in (slice(25, 45), slice(0, 12), slice(60, 70)):
        part = surprise_guard(x, loc, pv, nv, cfg, null_scale=1.3, frames=frames)
        assert part.loc.shape == (frames.stop - frames.start, 20, 20)
        for name in ("loc", "var", "p_surprise"):
            torch.testing.assert_close(
                getattr(part, name), getattr(whole, name)[frames], rtol=0, atol=0, msg=name
            )
    assert float(whole.p_surprise[32:38, 9, 9].mean()) > 0.5


def test_window_sums_do_not_depend_on_where_a_run_starts():
    # A chunk of frames that starts elsewhere must give each frame the same sums to the bit:
    # a last-bit difference could move a pixel into another calibration bin.
    from calmdown.posterior import window_sum

    rng = np.random.default_rng(5)
    x = torch.from_numpy((rng.gamma(1.0, 3.0, (90, 16, 40)) - 2.0).astype(np.float32))
    whole = window_sum(x, 31, 3)
    part = window_sum(x[17:80], 31, 3)  # frames 32..65 have their whole window inside
    assert torch.equal(part[15:48], whole[32:65])
    exact = window_sum(x.double(), 31, 3)
    torch.testing.assert_close(whole.double(), exact, rtol=1e-6, atol=1e-4)


def test_factors_fitted_where_the_prior_is_in_charge_leave_the_guards_variance_alone():
    # The correction's variance factors and the final stages are fitted on pixels where the
    # guard does not act. Fitted on an over-wide prior, they shrink its variance tenfold;
    # applied to the guard's variance too, they would narrow the interval of an event the
    # guard handed to the data until it no longer holds it.
    from calmdown.calibration import CalibrationStages, StratifiedCalibration
    from calmdown.correction import ResidualCorrection
    from calmdown.noise import NoiseModel
    from calmdown.pipeline import _guard_and_correct

    shrink = 0.1
    correction = ResidualCorrection((3, 9), (1, 9), 1, [0.0] * 8, [shrink] * 8, [1.0] * 7)
    final = CalibrationStages([StratifiedCalibration([], [], [[shrink]], feature="activity")])
    noise = NoiseModel(gain=1.0, offset=0.0, read_noise=0.0)
    hits, scaled = [], []
    for seed in range(4):
        x, loc, pv, _, clean = _blurred_process_event(seed, amplitude=3.0)
        g = _guard_and_correct(
            x, loc, pv, noise, GuardConfig(), null_scale=1.0, correction=correction,
            final=final, level=loc.mean(dim=0),
        )  # fmt: skip
        post = guarded_posterior(x, g, lambda level: torch.clamp(level, min=0.05))
        lower, upper = post.quantile(0.05), post.quantile(0.95)
        inside = (slice(30, 45), slice(8, 15), 12)
        hits.append(((clean >= lower) & (clean <= upper))[inside].float().mean())
        quiet = g.p_surprise < 1e-3
        scaled.append(float((g.var[quiet] / pv[quiet]).median()))
    assert np.mean(hits) >= 0.85
    # Where the prior is in charge, the factors do apply (both of them): its variance is a
    # hundredth of what it was, plus the little the guard adds where it is unsure.
    assert max(scaled) < 3 * shrink * shrink


def test_untested_variance_widens_the_prior_but_does_not_hide_an_event_from_the_guard():
    # The departure correction's variance (a departure that may or may not be real) is added
    # to the prior's after the guard: the guard still sees the event the prior half saw, and
    # the no-surprise component is wider by exactly that variance.
    from calmdown.noise import NoiseModel
    from calmdown.pipeline import _guard_and_correct

    noise = NoiseModel(gain=1.0, offset=0.0, read_noise=0.0)
    x, loc, pv, _, _ = _blurred_process_event(0, amplitude=3.0)
    untested = torch.full_like(pv, 9.0)  # (the event's amplitude squared)
    kw = {"null_scale": 1.0, "correction": None}
    plain = _guard_and_correct(x, loc, pv, noise, GuardConfig(), **kw)
    wide = _guard_and_correct(x, loc, pv, noise, GuardConfig(), **kw, untested=untested)
    assert torch.equal(plain.p_surprise, wide.p_surprise)
    inside = (slice(32, 42), slice(9, 14), 12)
    assert float(wide.p_surprise[inside].mean()) > 0.5
    torch.testing.assert_close(wide.components()[1], plain.components()[1] + untested)
    # Counted in the guard's own variance instead, it would have hidden the event.
    counted = _guard_and_correct(x, loc, pv + untested, noise, GuardConfig(), **kw)
    assert float(counted.p_surprise[inside].mean()) < 0.5 * float(wide.p_surprise[inside].mean())


def test_wide_spatial_window_sums_do_not_depend_on_where_the_band_starts():
    # The guard, correction and posterior run over row bands; a pixel's window sum must be the
    # same to the bit whichever row its band starts at (a last-bit difference near a bin edge
    # of the calibration became a different interval).
    from calmdown.posterior import window_sum

    g = torch.Generator().manual_seed(5)
    x = torch.rand((4, 64, 48), generator=g) * 30 + 0.1
    whole = window_sum(x, 1, 9)
    for start in (3, 17, 40):
        band = window_sum(x[:, start:], 1, 9)
        assert torch.equal(band[:, 4:], whole[:, start + 4 :])


def _mixture_tails(x, w, m0, s0, m1, s1):
    """Return the mixture's lower and upper tail probabilities at x, each to full precision."""
    lower = (1 - w) * stats.norm.cdf(x, m0, s0) + w * stats.norm.cdf(x, m1, s1)
    upper = (1 - w) * stats.norm.sf(x, m0, s0) + w * stats.norm.sf(x, m1, s1)
    return lower, upper


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_guarded_posterior_quantile_inverts_the_mixture_cdf(dtype):
    g = torch.Generator().manual_seed(3)
    n = 2000

    def draw(scale, offset=0.0, uniform=False):
        t = torch.rand(n, generator=g) if uniform else torch.randn(n, generator=g)
        return (offset + scale * t.double()).to(dtype)

    post = GuardedPosterior(
        weight=draw(1.0, uniform=True),
        mean0=draw(1.0),
        var0=draw(1.0, 0.01, uniform=True),
        mean1=draw(3.0),
        var1=draw(4.0, 0.01, uniform=True),
    )
    post.weight[:200] = 10 ** (-7 + 5 * torch.rand(200, generator=g)).to(dtype)  # rare ones
    w, m0, s0, m1, s1 = (
        a.double().numpy()
        for a in (post.weight, post.mean0, post.var0.sqrt(), post.mean1, post.var1.sqrt())
    )
    rtol = 2e-4 if dtype == torch.float64 else 1e-3
    for q in (0.05, 0.5, 0.95):
        x = post.quantile(q).double().numpy()
        lower, upper = _mixture_tails(x, w, m0, s0, m1, s1)
        tail, want = (lower, q) if q < 0.5 else (upper, 1 - q)
        # Within the solver's tolerance (1e-4 of the tail) and float32's rounding of x.
        np.testing.assert_allclose(tail, want, rtol=rtol)


def test_guarded_posterior_samples_follow_the_mixture_and_surprise_neighbours_together():
    # Pixels: no surprise, a rare one, a common one, a heavier one, one below the prior.
    w = torch.tensor([0.0, 1e-3, 0.3, 0.9, 0.2], dtype=torch.float64)
    m0 = torch.tensor([1.0, 0.0, 2.0, -1.0, 5.0], dtype=torch.float64)
    v0 = torch.tensor([0.04, 1.0, 0.25, 0.5, 0.1], dtype=torch.float64)
    m1 = torch.tensor([9.0, 4.0, 6.0, 3.0, 1.0], dtype=torch.float64)
    v1 = torch.tensor([4.0, 2.0, 1.0, 2.0, 0.3], dtype=torch.float64)
    post = GuardedPosterior(w, m0, v0, m1, v1)
    g = torch.Generator().manual_seed(11)
    u = torch.randn(40_000, 5, generator=g, dtype=torch.float64)
    xs = post.sample(u).numpy()
    for j in range(5):
        params = [float(t[j]) for t in (w, m0, v0.sqrt(), m1, v1.sqrt())]

        def cdf(x, p=params):
            return _mixture_tails(x, *p)[0]

        assert stats.kstest(xs[:, j], cdf).pvalue > 1e-3
    # The denoised value (the mixture's mean) is what the draws average to.
    se = xs.std(0) / np.sqrt(xs.shape[0])
    assert (np.abs(xs.mean(0) - post.mean.numpy()) < 4 * se).all()
    # Without a surprise, a draw is the component's mean plus u of its standard deviations.
    np.testing.assert_allclose(xs[:, 0], 1.0 + 0.2 * u[:, 0].numpy(), atol=1e-9)
    # Draws far out stay finite.
    far = torch.tensor([[40.0] * 5, [-40.0] * 5, [9.0] * 5, [-9.0] * 5], dtype=torch.float64)
    assert np.isfinite(post.sample(far).numpy()).all()
    # Two pixels with the same mixture (a surprise 6 sd away, weight 0.2) and draws that
    # correlate 0.9: surprised together far more often than the 0.04 of independent draws.
    pair = GuardedPosterior(
        *(t[[2, 2]] for t in (torch.full((5,), 0.2, dtype=torch.float64), m0, v0, m1, v1))
    )
    z = torch.randn(40_000, 2, generator=g, dtype=torch.float64)
    z[:, 1] = 0.9 * z[:, 0] + (1 - 0.81) ** 0.5 * z[:, 1]
    surprised = pair.sample(z).numpy() > 4.0
    assert 0.18 <= surprised.mean() <= 0.22
    assert (surprised[:, 0] & surprised[:, 1]).mean() > 0.12


def test_guarded_posterior_without_surprise_is_the_gaussian_posterior():
    x, loc, pv, nv = (
        torch.tensor([2.0, -1.0, 0.5]),
        torch.zeros(3),
        torch.full((3,), 0.2),
        torch.ones(3),
    )
    zero = torch.zeros(3)
    guard = GuardOutput(loc, pv, zero, zero, torch.full((3,), 5.0), torch.full((3,), 9.0))
    post = guarded_posterior(x, guard, lambda level: torch.ones_like(level))
    mean, var = gaussian_posterior(x, loc, pv, nv)
    z = float(stats.norm.ppf(0.95))
    torch.testing.assert_close(post.quantile(0.95), mean + z * var.sqrt())
    torch.testing.assert_close(post.quantile(0.05), mean - z * var.sqrt())


def test_a_rare_surprise_leaves_the_interval_the_prior_s():
    # Clean values drawn from the guarded prior itself: with probability 0.05 a surprise
    # (moved 0.3, variance 1 more), else the prior (variance 0.01), under noise of variance 1.
    # A single Gaussian with the mixture's variance covers 0.97 with intervals twice as wide;
    # the two components, mixed, cover at the nominal 0.90.
    g = torch.Generator().manual_seed(0)
    n, prior_var, slab, p, shift = 200_000, 0.01, 1.0, 0.05, 0.3

    def draw(scale: float) -> torch.Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64) * scale

    surprise = torch.rand(n, generator=g, dtype=torch.float64) < p
    clean = torch.where(surprise, shift + draw((prior_var + slab) ** 0.5), draw(prior_var**0.5))
    x = clean + draw(1.0)
    full = torch.full((n,), 1.0, dtype=torch.float64)
    guard_var = full * (p * slab + p * (1 - p) * shift**2)
    guard = GuardOutput(
        full * p * shift, prior_var + guard_var, full * p, guard_var, full * shift, full * slab
    )
    post = guarded_posterior(x, guard, lambda level: torch.ones_like(level))
    lo, hi = post.quantile(0.05), post.quantile(0.95)
    coverage = float(((clean >= lo) & (clean <= hi)).double().mean())
    assert 0.88 <= coverage <= 0.92
    mean, var = gaussian_posterior(x, guard.loc, guard.var, full)
    half = float(stats.norm.ppf(0.95)) * var.sqrt()
    assert float(((clean - mean).abs() <= half).double().mean()) > 0.95  # the single Gaussian
    assert float((hi - lo).mean()) < 0.6 * float((2 * half).mean())
    # The held-out check of raw values reads the same mixture (plus the noise): uniform PIT.
    check = predictive_check(predictive_pit(x, guard, lambda level: torch.ones_like(level)).numpy())
    assert 0.89 <= check["coverage"] <= 0.91
    assert check["pit_ks"] < 0.005


@pytest.mark.parametrize("w", [0.03, 0.5, 0.969, 0.999])
@pytest.mark.parametrize("above", [True, False])
def test_guarded_samples_stay_finite_at_the_components_boundary(w, above):
    # A draw whose rank falls on the boundary between the components (its rank within its
    # component rounds to 1 in float32) took that component's quantile at probability 1:
    # an infinite sample (seen once in 64 samples of 48 frames of 512 x 512).
    n = 20001
    shape = (n,)
    m0, v0 = torch.zeros(shape), torch.full(shape, 0.01)
    m1 = torch.full(shape, 2.0 if above else -2.0)
    post = GuardedPosterior(torch.full(shape, w), m0, v0, m1, torch.full(shape, 0.04))
    edge = float(stats.norm.ppf(min(w, 1 - w)))  # the boundary's rank on either side
    steps = torch.arange(-(n // 2), n // 2 + 1, dtype=torch.float64) * 1e-7
    for side in (1.0, -1.0):
        u = (side * (edge + steps)).float()[None]
        draws = post.sample(u)
        assert torch.isfinite(draws).all(), (w, above, side)
        # Within about 6 sd of one component or the other.
        near = torch.minimum((draws - m0).abs() / 0.1, (draws - m1).abs() / 0.2)
        assert float(near.max()) < 6.5


def test_a_prior_of_no_spread_still_gives_finite_intervals_and_samples():
    # A prior variance that underflowed to 0 beside a likely surprise: the mixture's quantiles
    # read NaN before the components' variance had a floor.
    loc, zero = torch.tensor([4.5, 3.5, 6.0]), torch.zeros(3)
    guard = GuardOutput(
        loc, zero, torch.tensor([0.65, 0.94, 0.34]), zero, torch.tensor([-2.0, -1.7, 0.7]),
        torch.tensor([0.8, 0.3, 1.7]),
    )  # fmt: skip
    post = guarded_posterior(torch.tensor([4.0, 3.0, 6.5]), guard, lambda level: level + 0.1)
    for q in (0.05, 0.5, 0.95):
        assert torch.isfinite(post.quantile(q)).all(), q
    assert (post.quantile(0.05) < post.quantile(0.95)).all()
    assert torch.isfinite(
        post.sample(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    ).all()
