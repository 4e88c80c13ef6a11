import numpy as np
import pytest

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
