import pickle
import tracemalloc

import numpy as np
import pytest

from calmdown import context
from calmdown.context import MeanImage, compute_mean_image, context_indices
from calmdown.errors import InputError


@pytest.mark.parametrize("k", [1, 3, 5])
def test_context_never_contains_the_frame_itself(k):
    n = 2 * k + 1
    t = np.arange(n)
    idx = context_indices(t, k, n)
    assert idx.shape == (n, 2 * k)
    assert np.all((idx >= 0) & (idx < n))
    assert not np.any(idx == t[:, None])


def test_interior_context_is_the_neighbours():
    assert context_indices(10, 2, 30).tolist() == [8, 9, 11, 12]


def test_too_few_frames_is_an_input_error():
    with pytest.raises(InputError, match="at least 7"):
        context_indices(0, 3, 6)


def test_mean_image_leave_one_out_excludes_the_frame():
    rng = np.random.default_rng(0)
    # Every frame holds the same values in another order: the brightness trend is flat.
    values = rng.poisson(3.0, 30).astype(np.float32)
    movie = np.stack([rng.permutation(values).reshape(5, 6) for _ in range(40)])
    mean = compute_mean_image(lambda a, b: movie[a:b], 40, window=1000, to_photons=lambda x: x)
    t = np.array([0, 17, 39])
    loo = mean.images(t, own_frames=movie[t])
    for i, ti in enumerate(t):
        others = np.delete(movie, ti, axis=0).mean(axis=0)
        np.testing.assert_allclose(loo[i], others, rtol=1e-5)


def test_running_mean_follows_a_linear_trend():
    t = np.arange(2000, dtype=np.float32)
    movie = np.broadcast_to((10 - 4 * t / 2000)[:, None, None], (2000, 3, 3)).copy()
    mean = compute_mean_image(lambda a, b: movie[a:b], 2000, window=250, to_photons=lambda x: x)
    assert isinstance(mean, MeanImage)
    mid = np.arange(200, 1800, 50)
    np.testing.assert_allclose(mean.images(mid)[:, 1, 1], movie[mid, 1, 1], atol=0.02)


def _long_movie(n_frames: int = 4000, side: int = 32) -> np.ndarray:
    rng = np.random.default_rng(3)
    drift = np.linspace(5.0, 3.0, n_frames, dtype=np.float32)[:, None, None]
    return (drift + rng.random((n_frames, side, side), dtype=np.float32)).astype(np.float32)


def test_block_means_beyond_the_limit_live_in_a_file_and_read_the_same(monkeypatch):
    movie = _long_movie()
    args = {"window": 20, "to_photons": lambda x: x, "chunk": 64}
    kept = compute_mean_image(lambda a, b: movie[a:b], len(movie), **args)
    monkeypatch.setattr(context, "IN_FILE_BYTES", 1 << 16)
    filed = compute_mean_image(lambda a, b: movie[a:b], len(movie), **args)
    assert isinstance(kept.means, np.ndarray)
    assert isinstance(filed.means, context.BlockFile)
    t = np.array([0, 7, 999, 2500, 3999])
    region = (slice(3, 20), slice(5, 9))
    np.testing.assert_array_equal(filed.images(t), kept.images(t))
    np.testing.assert_array_equal(
        filed.images(t, own_frames=movie[t][:, 3:20, 5:9], region=region),
        kept.images(t, own_frames=movie[t][:, 3:20, 5:9], region=region),
    )
    np.testing.assert_allclose(filed.global_mean, kept.global_mean, rtol=1e-6)
    np.testing.assert_array_equal(filed.means[:, ::4, ::4], kept.means[:, ::4, ::4])
    np.testing.assert_array_equal(filed.means[17], kept.means[17])
    np.testing.assert_array_equal(filed.means[3:9, 4:30, 2], kept.means[3:9, 4:30, 2])
    np.testing.assert_array_equal(filed.means[-1, -5:], kept.means[-1, -5:])
    # A Dask worker gets the array itself, not a handle on this machine's file.
    shipped = pickle.loads(pickle.dumps(filed))
    assert isinstance(shipped.means, np.ndarray)
    np.testing.assert_array_equal(shipped.means, kept.means)


def test_memory_of_the_mean_image_does_not_grow_with_the_movie(monkeypatch):
    # 2000 blocks of 32 x 32: 8 MB of block means (16 MB while summed in float64). Kept in a
    # file, computing and using them takes what one chunk of frames takes, whatever the length.
    movie = _long_movie()
    monkeypatch.setattr(context, "IN_FILE_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        mean = compute_mean_image(
            lambda a, b: movie[a:b], len(movie), window=2, to_photons=lambda x: x, chunk=64
        )
        mean.images(np.arange(1000, 1008))
        _ = mean.global_mean
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(mean.means, context.BlockFile)
    assert peak < 1.5 * 2**20, f"peak {peak / 2**20:.2f} MB"


def test_block_means_stay_in_memory_where_no_temporary_file_can_be_made(monkeypatch, caplog):
    movie = _long_movie(n_frames=400)
    monkeypatch.setattr(context, "IN_FILE_BYTES", 1 << 10)

    def no_file(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(context.tempfile, "TemporaryFile", no_file)
    with caplog.at_level("WARNING", logger="calmdown.context"):
        mean = compute_mean_image(lambda a, b: movie[a:b], 400, window=20, to_photons=lambda x: x)
    assert isinstance(mean.means, np.ndarray)
    assert "no space left" in caplog.text
    # Drift 5 -> 3 plus uniform noise of mean 0.5 on a flat scene.
    t = np.array([0, 70, 399])
    truth = np.linspace(5.0, 3.0, 400)[t] + 0.5
    np.testing.assert_allclose(mean.images(t).mean(axis=(1, 2)), truth, atol=0.03)


def test_mean_image_follows_bleaching_to_the_ends_of_the_movie():
    # One block (the movie is shorter than the window): the block mean alone would be flat.
    rng = np.random.default_rng(1)
    level = np.linspace(20.0, 12.0, 300)
    movie = rng.poisson(level[:, None, None] * np.ones((1, 16, 16))).astype(np.float32)
    mean = compute_mean_image(lambda a, b: movie[a:b], 300, window=500, to_photons=lambda x: x)
    t = np.array([0, 150, 299])
    got = mean.images(t).mean(axis=(1, 2))
    np.testing.assert_allclose(got, level[t], rtol=0.01)


def _static_with_a_drifting_patch(n_frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scene = np.full((n_frames, 40, 40), 4.0)
    scene[:, 5:11, 5:11] *= np.linspace(1.0, 1.5, n_frames)[:, None, None]  # local drift
    return rng.poisson(scene).astype(np.float32), scene


def test_static_pixels_average_the_whole_movie_and_drifting_ones_are_followed():
    movie, scene = _static_with_a_drifting_patch(2000, seed=2)
    mean = compute_mean_image(lambda a, b: movie[a:b], 2000, window=250, to_photons=lambda x: x)
    t = np.arange(0, 2000, 97)
    err = mean.images(t) - scene[t]
    static = err[:, 25:, 25:]
    # Poisson variance 4: a 250-frame block mean errs by sqrt(4 / 250) = 0.126 rms, the whole
    # movie's by 0.045.
    assert np.sqrt(np.mean(static**2)) < 0.07
    # The drifting patch (4 -> 6 over the movie) is followed, not flattened to its average.
    patch = err[:, 6:10, 6:10]
    assert np.abs(patch.mean(axis=(1, 2))).max() < 0.3
    # The stated noise of the mean image is the whole movie's where nothing drifts, a block's
    # where it does.
    factor = mean.noise_factor(t)
    assert factor.shape == (len(t), 40, 40)
    np.testing.assert_allclose(factor[:, 25:, 25:].mean(), 1 / 2000, rtol=0.3)
    assert factor[:, 6:10, 6:10].mean() > 2.5 / 2000


def test_the_stated_noise_of_the_mean_image_is_its_spread_over_repeats():
    t = np.array([100, 1000, 1900])
    images = []
    for seed in range(24):
        movie, scene = _static_with_a_drifting_patch(2000, seed=10 + seed)
        mean = compute_mean_image(
            lambda a, b, m=movie: m[a:b], 2000, window=250, to_photons=lambda x: x
        )
        images.append(mean.images(t) - scene[t])
        if seed == 0:
            stated = mean.noise_factor(t) * scene[t]  # Poisson: a frame's variance is its mean
    measured = np.var(np.stack(images), axis=0)
    for region in (np.s_[:, 25:, 25:], np.s_[:, 6:10, 6:10]):  # static, drifting
        ratio = measured[region].mean() / stated[region].mean()
        assert 0.7 < ratio < 1.4, ratio


def test_leave_one_out_removes_what_the_frame_gave_its_mean_image():
    movie, _ = _static_with_a_drifting_patch(1000, seed=3)
    args = {"window": 250, "to_photons": lambda x: x}
    t = np.array([400])
    before = compute_mean_image(lambda a, b: movie[a:b], 1000, **args)
    moved = movie.copy()
    moved[400, 30, 30] += 20.0  # the frame's total unchanged: the trend stays put
    moved[400, 30, 31] -= 20.0
    after = compute_mean_image(lambda a, b: moved[a:b], 1000, **args)
    plain = after.images(t) - before.images(t)
    loo = after.images(t, own_frames=moved[t]) - before.images(t, own_frames=movie[t])
    assert abs(plain[0, 30, 30]) > 0.015  # 20 / 1000, or 20 / 250 within a block
    assert abs(loo[0, 30, 30]) < 0.002 and abs(loo[0, 30, 31]) < 0.002
