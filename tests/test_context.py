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
    movie = rng.poisson(3.0, (40, 5, 6)).astype(np.float32)
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
    np.testing.assert_allclose(mean.means[3], movie[60:80].mean(axis=0), rtol=1e-5)
