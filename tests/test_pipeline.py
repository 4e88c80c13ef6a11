import itertools

import numpy as np
import pytest

import calmdown
from calmdown.config import make_config
from calmdown.errors import InputError
from calmdown.runtime import onnxruntime_available
from calmdown.simulate import simulate

from .conftest import psnr


def _ma(raw, width=5):
    from scipy.ndimage import uniform_filter1d

    return uniform_filter1d(raw.astype(np.float32), width, axis=0, mode="nearest")


@pytest.fixture(scope="module")
def outputs(small_sim, small_model):
    raw_before = small_sim.raw.copy()
    post = calmdown.apply(small_model, small_sim.raw)
    prior = calmdown.apply(small_model, small_sim.raw, output="prior")
    assert np.array_equal(small_sim.raw, raw_before), "the input array was modified"
    return post, prior


def test_shape_length_and_dtype_are_kept(small_sim, outputs):
    post, prior = outputs
    assert post.shape == small_sim.raw.shape and prior.shape == small_sim.raw.shape
    assert post.dtype == np.float32
    assert np.all(np.isfinite(post))
    # First and last frames are denoised too, as well as the middle ones.
    for t in (0, -1):
        assert psnr(post[t], small_sim.clean[t]) > psnr(small_sim.raw[t], small_sim.clean[t]) + 6


def test_beats_raw_and_moving_average(small_sim, outputs):
    post, _ = outputs
    gain_raw = psnr(post, small_sim.clean) - psnr(small_sim.raw, small_sim.clean)
    gain_ma = psnr(post, small_sim.clean) - psnr(_ma(small_sim.raw), small_sim.clean)
    assert gain_raw > 12.0
    assert gain_ma > 4.0


def test_posterior_at_least_as_good_as_prior(small_sim, outputs):
    post, prior = outputs
    assert psnr(post, small_sim.clean) >= psnr(prior, small_sim.clean) - 0.05


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_result_does_not_depend_on_chunking(small_sim, small_model, runtime):
    # Frames that two chunks share are predicted once and carried over, every window sum is
    # the same to the bit wherever its chunk starts, and the network always sees full
    # batches: chunks of 9 frames give the one-chunk result exactly (a last-bit difference
    # could move a pixel into another calibration bin, a visibly different interval).
    if runtime == "onnxruntime" and not onnxruntime_available():
        pytest.skip("ONNX Runtime is not installed (pip install 'calmdown[onnx]')")

    def run(**options):
        chunks = list(
            calmdown.iter_apply(
                small_model, small_sim.raw[:80], interval=0.9, runtime=runtime, **options
            )
        )
        return {
            name: np.concatenate([getattr(c, name) for c in chunks])
            for name in ("denoised", "lower", "upper", "p_surprise")
        }

    whole, chunked = run(), run(chunk_frames=9)
    for name, value in whole.items():
        np.testing.assert_array_equal(chunked[name], value, err_msg=name)


def test_chunk_frames_asked_for_are_given_whatever_the_frame_size(small_sim, small_model):
    # Large frames get fewer frames per chunk (a cap on pixels, to bound memory); frames asked
    # for explicitly (--chunk-frames) are given as asked, trading memory for speed.
    movie = small_sim.raw[:60]
    capped = make_config(small_model.config, chunk_pixels=8192)  # 2 frames of 64 x 64

    def sizes(**options):
        return [
            c.stop - c.start
            for c in calmdown.iter_apply(small_model, movie, config=capped, **options)
        ]

    assert sizes() == [2] * 30
    assert sizes(chunk_pixels=8192, chunk_frames=25) == [2] * 30
    assert sizes(chunk_frames=25) == [25, 25, 10]
    cfg = make_config(small_model.config, chunk_frames=25)
    assert cfg.inference.chunk_pixels == 1 << 22  # a config keeps its cap unless told otherwise


def test_result_does_not_depend_on_row_bands(small_sim, small_model, monkeypatch):
    # The guard, the correction and the posterior run over row bands of each chunk (with
    # the rows their windows reach); bands of a few rows must give the whole-frame result.
    from calmdown import pipeline

    def run():
        chunks = list(calmdown.iter_apply(small_model, small_sim.raw[:60], interval=0.9, samples=2))
        return {
            name: np.concatenate([getattr(c, name) for c in chunks], axis=-3)
            for name in ("denoised", "lower", "upper", "p_surprise", "samples")
        }

    monkeypatch.setattr(pipeline, "_BAND_PIXELS", 1 << 40)
    whole = run()
    monkeypatch.setattr(pipeline, "_BAND_PIXELS", 60 * 64 * 5)  # bands of 5 rows
    banded = run()
    assert pipeline._spatial_halo(small_model.config.inference.guard, small_model.correction) > 5
    for name, value in whole.items():
        np.testing.assert_allclose(banded[name], value, rtol=1e-5, atol=1e-4, err_msg=name)


def test_samples_at_some_pixels_equal_the_whole_frames_there(small_sim, small_model):
    # ROI traces draw samples at the ROIs' pixels only: the same values as whole frames'.
    raw = small_sim.raw[:60]
    mask = np.zeros(raw.shape[1:], bool)
    mask[3:9, 10:40] = True
    mask[50, :] = True
    mask[20:30, 5] = True
    whole = list(calmdown.iter_apply(small_model, raw, samples=3, chunk_frames=25))
    some = list(
        calmdown.iter_apply(small_model, raw, samples=3, chunk_frames=25, sample_pixels=mask)
    )
    full = np.concatenate([c.samples for c in whole], axis=1)
    part = np.concatenate([c.samples for c in some], axis=1)
    assert part.shape == (3, 60, int(mask.sum()))
    np.testing.assert_array_equal(part, full[:, :, mask])
    np.testing.assert_array_equal(
        np.concatenate([c.denoised for c in some]), np.concatenate([c.denoised for c in whole])
    )
    with pytest.raises(InputError, match="sample_pixels has shape"):
        next(calmdown.iter_apply(small_model, raw, samples=3, sample_pixels=mask[:10]))


def test_intervals_bracket_the_estimate(small_sim, small_model):
    chunks = list(calmdown.iter_apply(small_model, small_sim.raw[:40], interval=0.9))
    lower = np.concatenate([c.lower for c in chunks])
    upper = np.concatenate([c.upper for c in chunks])
    den = np.concatenate([c.denoised for c in chunks])
    assert np.all(lower <= den) and np.all(den <= upper) and np.all(upper > lower)


def test_intervals_cover_the_truth(small_sim, small_model):
    # 90 % credible intervals of the clean movie, calibrated without ground truth (measured
    # 0.927 when written; the benchmark grid is in benchmarks/calibration.py).
    chunks = list(calmdown.iter_apply(small_model, small_sim.raw, interval=0.9))
    lower = np.concatenate([c.lower for c in chunks])
    upper = np.concatenate([c.upper for c in chunks])
    inside = (small_sim.clean >= lower) & (small_sim.clean <= upper)
    assert 0.85 <= inside.mean() <= 0.95
    # The calibration also used trained-on frames, after checking the network had not
    # memorised them.
    check = small_model.heldout["memorisation"]
    assert not check["memorised"] and check["trained_frames_used"] > 0


def test_same_seed_same_output():
    sim = simulate("dense", photons=2.0, shape=(40, 32, 32), seed=5)
    kw = {"max_steps": 15, "val_every": 5, "time_budget_s": None, "seed": 7}
    a = calmdown.denoise(sim.raw, **kw)
    b = calmdown.denoise(sim.raw, **kw)
    np.testing.assert_array_equal(a, b)


def test_too_short_movie_is_refused():
    with pytest.raises(InputError, match="at least 7"):
        calmdown.denoise(np.random.default_rng(0).poisson(2, (5, 32, 32)).astype(np.uint16))


def test_model_applies_to_another_recording(small_model):
    other = simulate("dense", photons=1.5, shape=(60, 64, 64), seed=11)
    out = calmdown.apply(small_model, other.raw)
    assert psnr(out, other.clean) > psnr(other.raw, other.clean) + 8


def test_large_frames_are_calibrated_in_windows(monkeypatch):
    """Calibration predicts random windows of large frames (bounded memory) and still covers."""
    import calmdown.pipeline as pipeline

    drawn = []
    real = pipeline._crop_windows

    def spy(h, w, n_pixels, rng):
        draw = real(h, w, n_pixels, rng)
        assert draw is not None, "the lowered budget must force windows"

        def counted():
            region, keep = draw()
            drawn.append((region, keep))
            return region, keep

        return counted

    monkeypatch.setattr(pipeline, "_HELDOUT_PIXELS", 1_000_000)
    monkeypatch.setattr(pipeline, "_crop_windows", spy)
    sim = simulate("dense", photons=1.5, shape=(200, 128, 128), seed=4)
    model = calmdown.train(sim.raw, max_steps=200, time_budget_s=None, seed=0, val_every=50)
    assert drawn
    for region, keep in drawn:
        side = keep[0].stop - keep[0].start
        assert side < 128 and keep[1].stop - keep[1].start == side
        assert region[0].stop - region[0].start <= side + 2 * pipeline._CROP_MARGIN
    chunks = list(calmdown.iter_apply(model, sim.raw, interval=0.9))
    lower = np.concatenate([c.lower for c in chunks])
    upper = np.concatenate([c.upper for c in chunks])
    inside = (sim.clean >= lower) & (sim.clean <= upper)
    assert 0.85 <= inside.mean() <= 0.95, inside.mean()


def test_progress_says_when_the_calibration_begins():
    sim = calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    seen = []
    calmdown.train(sim.raw, max_steps=20, val_every=10, seed=0, progress=seen.append)
    assert [info.phase for info in seen] == ["training", "training", "calibrating"]
    assert seen[-1].step == 20 and seen[-1].best_val_loss == min(i.val_loss for i in seen[:-1])


@pytest.mark.parametrize("run", [calmdown.train, calmdown.denoise])
def test_emulated_bfloat16_is_refused_before_the_movie_is_read(run, monkeypatch):
    from calmdown import device as device_module

    monkeypatch.setattr(device_module, "native_bfloat16", lambda device: False)
    # Two frames: reading them would be refused as too short, not for the precision.
    with pytest.raises(InputError, match="no native bfloat16"):
        run(np.zeros((2, 16, 16), np.float32), precision="bfloat16")


GAPS = [0, 120, 121, 122, 200, 299]
"""Blank frames of :func:`gapped`: a late shutter, a dropped run, a saturated one, the last."""


def gapped(raw: np.ndarray) -> np.ndarray:
    movie = raw.astype(np.float32)
    movie[[0, 120, 121, 122, 299]] = 0.0
    movie[200] = 5000.0
    return movie


@pytest.fixture(scope="module")
def gap_run(small_sim, small_model):
    movie = gapped(small_sim.raw)
    kw = {"interval": 0.9, "samples": 2}
    whole = list(calmdown.iter_apply(small_model, movie, **kw))
    cut = list(calmdown.iter_apply(small_model, np.delete(movie, GAPS, axis=0), **kw))
    return movie, whole, cut


def test_blank_frames_are_passed_through_to_every_output(gap_run):
    movie, whole, _ = gap_run
    assert whole[0].start == 0 and whole[-1].stop == 300
    assert all(a.stop == b.start for a, b in itertools.pairwise(whole))
    den, lower, upper = (
        np.concatenate([c.output(k) for c in whole]) for k in ("denoised", "lower", "upper")
    )
    samples = np.concatenate([c.samples for c in whole], axis=1)
    p = np.concatenate([c.p_surprise for c in whole])
    for a in (den, lower, upper, samples[0], samples[1]):
        assert a.shape == movie.shape
        np.testing.assert_array_equal(a[GAPS], movie[GAPS])
    assert (p[GAPS] == 0).all()
    measured = np.setdiff1d(np.arange(300), GAPS)
    assert np.isfinite(den).all() and (lower[measured] < upper[measured]).all()


def test_measured_frames_are_denoised_as_in_the_movie_cut_by_hand(gap_run):
    _, whole, cut = gap_run
    measured = np.setdiff1d(np.arange(300), GAPS)
    for key in ("denoised", "lower", "upper", "prior", "p_surprise"):
        got = np.concatenate([c.output(key) for c in whole])[measured]
        np.testing.assert_array_equal(got, np.concatenate([c.output(key) for c in cut]), key)
    np.testing.assert_array_equal(
        np.concatenate([c.samples for c in whole], axis=1)[:, measured],
        np.concatenate([c.samples for c in cut], axis=1),
    )


def test_frames_asked_for_are_numbered_as_the_movie_with_gaps(gap_run, small_model):
    movie, whole, _ = gap_run
    den = np.concatenate([c.denoised for c in whole])
    for frames in ((118, 126), (120, 123), (121, 122), (195, 300)):
        part = list(calmdown.iter_apply(small_model, movie, frames=frames))
        assert (part[0].start, part[-1].stop) == frames
        np.testing.assert_array_equal(
            np.concatenate([c.denoised for c in part]), den[slice(*frames)]
        )
    dropped = list(calmdown.iter_apply(small_model, movie, blank_frames="drop"))
    assert dropped[-1].stop == 300 - len(GAPS)


def test_blank_frames_are_refused_where_asked(small_sim):
    with pytest.raises(InputError, match="frames 119-121 of frames"):
        calmdown.prepare(gapped(small_sim.raw)[1:], make_config(), blank_frames="error")


def test_a_clipped_recording_keeps_its_intervals_calibrated():
    """0.5 % of the values clipped at a ceiling leave the intervals calibrated elsewhere.

    Training counts a clipped value by the probability of reaching the ceiling; the
    calibration leaves out the values at it and those whose noise it cuts off (taken as
    measured, the coverage read 0.47, with NaN interval ends).
    """
    sim = simulate("dense", photons=4.0, shape=(300, 64, 64), seed=2)
    ceiling = np.quantile(sim.raw, 0.995)
    raw = np.minimum(sim.raw, ceiling)
    with pytest.warns(UserWarning, match="a ceiling"):
        model = calmdown.train(raw, max_steps=300, time_budget_s=60, seed=0, val_every=50)
        chunks = list(calmdown.iter_apply(model, raw, interval=0.9))
    assert model.noise.clip_high == ceiling
    lower, upper = (np.concatenate([c.output(k) for c in chunks]) for k in ("lower", "upper"))
    assert np.isfinite(lower).all() and np.isfinite(upper).all()
    measured = raw < ceiling
    inside = (sim.clean >= lower) & (sim.clean <= upper)
    assert inside[measured].mean() >= 0.75, inside[measured].mean()  # 0.85; unclipped 0.86


def test_denoised_value_is_what_the_joint_samples_average_to(small_sim, small_model):
    # The denoised value is the mean of the posterior the samples are drawn from, also where
    # the guard is unsure of a surprise (a single Gaussian with the mixture's moments put it
    # elsewhere there: mean squared z of the samples' average 2.4 on these pixels).
    chunks = list(calmdown.iter_apply(small_model, small_sim.raw[:100], samples=64))
    den = np.concatenate([c.denoised for c in chunks])
    draws = np.concatenate([c.samples for c in chunks], axis=1)
    p = np.concatenate([c.p_surprise for c in chunks])
    unsure = (p > 0.05) & (p < 0.95)
    assert unsure.sum() > 500
    z = (draws.mean(0) - den) / (draws.std(0, ddof=1) / np.sqrt(draws.shape[0]))
    assert np.mean(z[unsure] ** 2) < 1.5
    assert np.mean(z**2) < 1.2
