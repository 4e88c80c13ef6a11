import numpy as np
import torch

from calmdown.config import make_config
from calmdown.context import compute_mean_image
from calmdown.noise import NoiseModel
from calmdown.pipeline import _predict_prior
from calmdown.propagation import frame_noise


def _noise() -> NoiseModel:
    return NoiseModel(gain=1.0, offset=0.0, read_noise=0.0, source="test")


def test_frame_noise_is_reproducible_and_has_the_asked_correlation():
    a = frame_noise((1, 256, 256), frame=7, seed=0, correlation=(0.3, 0.0))
    b = frame_noise((1, 256, 256), frame=7, seed=0, correlation=(0.3, 0.0))
    c = frame_noise((1, 256, 256), frame=8, seed=0, correlation=(0.3, 0.0))
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = a[0].numpy()
    assert abs(z.var() - 1.0) < 0.05
    assert abs(np.mean(z[1:] * z[:-1]) / z.var() - 0.3) < 0.03  # along y
    assert abs(np.mean(z[:, 1:] * z[:, :-1]) / z.var()) < 0.03  # x stays white


def test_frame_noise_correlates_along_x_and_both_axes_in_every_channel():
    z = frame_noise((3, 256, 256), frame=2, seed=1, correlation=(0.2, 0.4)).numpy()
    for ch in z:
        assert abs(ch.var() - 1.0) < 0.05
        assert abs(np.mean(ch[1:] * ch[:-1]) / ch.var() - 0.2) < 0.03
        assert abs(np.mean(ch[:, 1:] * ch[:, :-1]) / ch.var() - 0.4) < 0.03
    assert abs(np.mean(z[0] * z[1])) < 0.03  # channels are independent draws


class _Averager(torch.nn.Module):
    """A 'network' whose prior is the mean of its 2K context frames."""

    def forward(self, mean, frames):
        return frames.mean(dim=1, keepdim=True), torch.ones_like(mean)


def test_probe_measures_the_noise_that_reaches_the_prior():
    # Averaging 2K = 6 frames of Poisson noise at level L passes on a variance of L / 6.
    level, k = 4.0, 3
    rng = np.random.default_rng(0)
    photons = rng.poisson(level, (64, 48, 48)).astype(np.float32)
    noise = _noise()
    mean_image = compute_mean_image(
        lambda a, b: photons[a:b], 64, window=64, to_photons=lambda x: x
    )
    cfg = make_config(context_frames=k, probe_stride=2)
    pred = _predict_prior(
        _Averager(),
        photons,
        0,
        64,
        np.arange(64),
        mean_image,
        scale0=1.0,
        config=cfg,
        device=torch.device("cpu"),
        noise=noise,
    )
    assert pred.propagated is not None
    measured = float(pred.propagated.mean())
    assert abs(measured - level / (2 * k)) < 0.1 * level / (2 * k)


def test_calibration_restores_coverage_of_an_overconfident_prior():
    from calmdown.calibration import fit_scale_calibration

    # True prior errors have sd 0.3 (a tenth of them 1.0); the network claims 0.03.
    rng = np.random.default_rng(1)
    n = 400_000
    sd_true = np.where(rng.random(n) < 0.1, 1.0, 0.3)
    err = rng.standard_normal(n) * sd_true
    noise_var = np.full(n, 2.0)
    x = err + rng.standard_normal(n) * np.sqrt(noise_var)  # prior at 0, truth = err
    claimed = (0.03 * sd_true / 0.3) ** 2

    def coverage(prior_var: np.ndarray) -> float:
        w = prior_var / (prior_var + noise_var)
        mean, sd = w * x, np.sqrt(w * noise_var)
        return float(np.mean(np.abs(err - mean) <= 1.645 * sd))

    calib = fit_scale_calibration(claimed, x**2, noise_var + 0 * x, n_bins=5)
    fitted = calib.apply(torch.from_numpy(claimed)).numpy()
    assert coverage(claimed) < 0.6
    assert 0.87 <= coverage(fitted) <= 0.93
