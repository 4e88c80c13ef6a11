import numpy as np
import pytest
from scipy.ndimage import convolve1d

from calmdown.errors import InputError
from calmdown.noise import NoiseModel, estimate_noise
from calmdown.simulate import Detector, simulate


def _estimate(raw: np.ndarray, **kw) -> NoiseModel:
    return estimate_noise(lambda a, b: raw[a:b], raw.shape[0], **kw)


@pytest.mark.parametrize("photons", [0.3, 1.0, 4.0, 20.0])
def test_gain_within_10_percent_at_every_photon_level(photons):
    sim = simulate("dense", photons=photons, shape=(300, 64, 64), seed=1)
    model = _estimate(sim.raw)
    true_gain = sim.detector.conversion_gain
    assert abs(model.gain / true_gain - 1) < 0.10
    assert abs(model.offset - sim.detector.offset) < 0.1 * true_gain


def test_photons_per_pixel_is_reported():
    sim = simulate("static", photons=2.0, shape=(200, 48, 48), seed=0)
    model = _estimate(sim.raw)
    det = sim.detector
    truth = np.median((sim.clean.mean(axis=0) - det.offset) / det.conversion_gain)
    assert model.photons_per_pixel == pytest.approx(truth, rel=0.05)


def test_flat_movie_warns_that_the_gain_is_undetermined():
    sim = simulate("noise", photons=2.0, shape=(200, 48, 48), seed=0)
    with pytest.warns(UserWarning, match="poorly determined"):
        _estimate(sim.raw)


def test_uniform_brightness_asks_for_the_gain_instead_of_crashing():
    """Nearly every pixel at one level: no photon-transfer slope to fit (was a LinAlgError)."""
    from scipy.ndimage import gaussian_filter

    from calmdown.simulate import record

    rng = np.random.default_rng(0)
    spots = np.zeros((6, 32, 32), np.float32)
    for spot in spots:
        spot[tuple(rng.integers(4, 28, 2))] = 1.0
        spot[:] = gaussian_filter(spot, 2.5) / gaussian_filter(spot, 2.5).max()
    blinking = rng.random((240, 6)) < 0.3  # white in time: it looks like noise
    raw = record(0.7 + 4.2 * np.tensordot(blinking.astype(np.float32), spots, axes=1), seed=2)
    with pytest.raises(InputError, match=r"nearly every pixel has the same brightness.*--gain"):
        _estimate(raw)
    assert _estimate(raw, gain=12.5).gain == 12.5


def test_read_noise_and_another_detector():
    det = Detector(gain=4.0, excess_noise_factor=1.0, offset=30.0, read_noise=3.0)
    sim = simulate("dense", photons=1.0, shape=(300, 48, 48), seed=2, detector=det)
    model = _estimate(sim.raw)
    assert model.gain == pytest.approx(4.0, rel=0.1)
    assert model.read_noise == pytest.approx(3.0, rel=0.25)


def test_interpolated_noise_is_measured_and_does_not_bias_the_gain():
    sim = simulate("dense", photons=2.0, shape=(300, 64, 64), seed=4)
    kernel = np.array([0.25, 0.5, 0.25])
    smooth = convolve1d(convolve1d(sim.raw, kernel, axis=1), kernel, axis=2)
    model = _estimate(smooth)
    assert min(model.neighbour_correlation) > 0.3
    assert model.variance_ratio < 0.6
    assert abs(model.gain / sim.detector.conversion_gain - 1) < 0.10
    naive = _estimate(sim.raw)
    assert max(abs(c) for c in naive.neighbour_correlation) < 0.05


def test_user_values_override():
    sim = simulate("dense", photons=1.0, shape=(100, 32, 32), seed=0)
    model = _estimate(sim.raw, gain=7.0, offset=90.0, read_noise=1.0)
    assert (model.gain, model.offset, model.read_noise, model.source) == (7.0, 90.0, 1.0, "given")


def test_constant_movie_is_refused():
    with pytest.raises(InputError, match="does not change"):
        _estimate(np.full((50, 16, 16), 7.0, np.float32))


def test_nan_is_refused():
    raw = np.random.default_rng(0).poisson(2, (50, 16, 16)).astype(np.float32)
    raw[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        _estimate(raw)


def test_round_trip_dict():
    model = _estimate(simulate("dense", photons=1.0, shape=(60, 32, 32), seed=0).raw)
    assert NoiseModel.from_dict(model.to_dict()) == model


def test_the_movie_is_read_in_small_pieces_with_the_same_result():
    # A 512 x 512 x 1000 movie read whole took 3.4 GB; pieces keep memory flat in length,
    # and the model is that of one whole read (no frame-to-frame difference is lost).
    sim = simulate("dense", photons=2.0, shape=(700, 48, 48), seed=1)
    raw = sim.raw.astype(np.float32)
    asked: list[int] = []

    def read(start: int, stop: int) -> np.ndarray:
        asked.append(stop - start)
        return raw[start:stop]

    model = estimate_noise(read, 700)
    assert max(asked) <= 64 and sum(asked) == 700
    from calmdown import noise

    whole = noise._PIECE
    try:
        noise._PIECE = 1024
        reference = estimate_noise(lambda a, b: raw[a:b], 700)
    finally:
        noise._PIECE = whole
    assert model.gain == pytest.approx(reference.gain, rel=1e-9)
    assert model.read_noise == pytest.approx(reference.read_noise, rel=1e-9)


def test_a_saturation_ceiling_is_named_and_left_out_of_the_fit():
    raw = simulate("dense", photons=4.0, shape=(300, 128, 128), seed=1).raw.astype(np.float32)
    plain = _estimate(raw)
    ceiling = np.percentile(raw, 95)  # 5 % of the values clipped
    with pytest.warns(UserWarning, match=r"4\.9\d% of the values sit at 187 ADU, a ceiling"):
        clipped = _estimate(np.minimum(raw, ceiling))
    # Left in the fit, the clipped pixels read the gain 22 % low; left out, 4.4 %.
    assert clipped.gain == pytest.approx(plain.gain, rel=0.06)
    assert clipped.offset == pytest.approx(plain.offset, abs=1.0)
    assert (clipped.clip_low, clipped.clip_high) == (None, 187.0)
    assert (plain.clip_low, plain.clip_high) == (None, None) and not plain.clips
    photons = clipped.to_photons(np.array([150.0, 187.0]))
    assert clipped.measured(photons).tolist() == [True, False]
    # A value whose expected level is within 4 noise sd of the ceiling is cut off there too.
    near = clipped.to_photons(np.array([180.0, 100.0]))
    assert clipped.measured(photons[:1].repeat(2), near).tolist() == [False, True]


def test_a_floor_is_named():
    raw = simulate("dense", photons=4.0, shape=(300, 64, 64), seed=1).raw.astype(np.float32)
    # Finely graded values, as a movie of many ADU per photon has.
    raw += np.random.default_rng(0).uniform(-0.5, 0.5, raw.shape).astype(np.float32)
    floor = float(np.percentile(raw, 3))  # offset subtracted and negatives clipped, say
    with pytest.warns(UserWarning, match=rf"of the values sit at {floor:g} ADU, a floor"):
        model = _estimate(np.maximum(raw, floor))
    assert model.clip_low == floor and model.clip_high is None
    assert not model.clips and model.measured(model.to_photons(np.array([floor]))).all()


def test_the_top_of_the_noise_is_not_a_ceiling(recwarn):
    raw = simulate("dense", photons=0.5, shape=(200, 64, 64), seed=0).raw  # integer ADU
    model = _estimate(raw)
    assert not [w for w in recwarn if "ceiling" in str(w.message) or "floor" in str(w.message)]
    assert not model.clips


@pytest.mark.parametrize("scale", [1e-3, 37.0])
def test_the_noise_model_scales_with_the_movie(scale):
    raw = simulate("dense", photons=2.0, shape=(300, 64, 64), seed=1).raw.astype(np.float32)
    plain = _estimate(raw)
    scaled = _estimate((raw * scale).astype(np.float32))
    # A floor of one ADU on the read noise read a movie divided by 1000 with offset 1768 (100).
    assert scaled.gain / scale == pytest.approx(plain.gain, rel=1e-3)
    assert scaled.offset / scale == pytest.approx(plain.offset, rel=1e-3)
    assert scaled.read_noise / scale == pytest.approx(plain.read_noise, rel=1e-2)
    assert scaled.photons_per_pixel == pytest.approx(plain.photons_per_pixel, rel=1e-3)
