"""How much of the detector noise in the network's inputs reaches its prediction.

The context prior is computed from noisy inputs: the frames ``t-K..t+K`` (without ``t``) and
the running mean image. Their noise propagates into the prior location, and that part of the
prior's error is known without any ground truth: it is ``J Sigma J^T``, the input noise
covariance ``Sigma`` (given by the noise model) pushed through the network's Jacobian ``J``.
A network trained on a few photons per pixel cannot learn this from the data (its own spread
head sees residuals dominated by the pixel's noise), so we measure it directly: run the
network again on inputs perturbed by a draw of their own noise, scaled by ``eps``, and take
``((f(x + eps * n) - f(x)) / eps) ** 2``. One probe is one chi-square draw per pixel; averaged
over a space-time window (the Jacobian changes slowly) it is a stable estimate. Probing every
``stride``-th frame costs ``1 / stride`` of a network pass.

The perturbation has the noise's own neighbour correlation (registered movies share noise
between neighbouring pixels), made by a separable ``[c, 1, c]`` filter of white noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from calmdown.noise import NoiseModel

__all__ = ["EPS", "WINDOW", "frame_noise", "input_noise_sd", "probe_frames", "probe_halo"]

EPS = 0.5
"""Size of the perturbation, as a fraction of the input noise (a local linearisation)."""

WINDOW = (9, 5)
"""(frames, pixels) of the window over which the probes are averaged."""


def probe_halo(stride: int) -> int:
    """Frames on each side the averaged probe needs beyond the frames it is given for."""
    return WINDOW[0] // 2 if stride > 0 else 0


def _filter_coefficient(rho: float) -> float:
    """``c`` such that white noise filtered by ``[c, 1, c]`` has lag-1 correlation ``rho``."""
    rho = float(np.clip(rho, 0.0, 0.5))
    if rho < 1e-6:
        return 0.0
    return (1.0 - math.sqrt(1.0 - 2.0 * rho * rho)) / (2.0 * rho)


def frame_noise(
    shape: tuple[int, ...],
    frame: int,
    seed: int,
    correlation: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Unit-variance Gaussian noise for one frame, the same for the same frame and seed.

    Parameters
    ----------
    shape : tuple of int
        ``(C, Y, X)``: channels (the frame's inputs) and pixels.
    frame : int
        Absolute frame index (so the draw does not depend on how the movie is chunked).
    seed : int
        Seed of the run.
    correlation : (float, float)
        Lag-1 correlation between neighbouring pixels along y and x.

    Returns
    -------
    Tensor
        float32 on the CPU.
    """
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(frame)) % (2**63 - 1))
    z = torch.randn(shape, generator=gen)
    for dim, r in ((1, correlation[0]), (2, correlation[1])):
        c = _filter_coefficient(r)
        if c > 0:
            z = _three_tap(z, c, dim)
    return z


def _three_tap(z: torch.Tensor, c: float, dim: int) -> torch.Tensor:
    """Filter ``z`` along ``dim`` by ``[c, 1, c] / sqrt(1 + 2 c^2)``, edges replicated.

    Shifted adds: two one-channel ``conv2d`` took 0.14 s per probed frame at 512 x 512 (7
    input channels; 0.022 s so), and inference was 1.2x faster without them.
    """
    n = z.shape[dim]
    before = torch.cat([z.narrow(dim, 0, 1), z.narrow(dim, 0, n - 1)], dim=dim)
    after = torch.cat([z.narrow(dim, 1, n - 1), z.narrow(dim, n - 1, 1)], dim=dim)
    return (before.add_(after).mul_(c).add_(z)).div_(math.sqrt(1 + 2 * c * c))


def probe_frames(frames: np.ndarray, stride: int, *, start: int = 0) -> np.ndarray:
    """Boolean mask of the frames (absolute indices ``frames + start``) that are probed."""
    return (np.asarray(frames) + start) % max(stride, 1) == 0


def input_noise_sd(
    mean: torch.Tensor, noise: NoiseModel, mean_var_factor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise standard deviation of a context frame and of the mean image, per pixel.

    Parameters
    ----------
    mean : Tensor
        (B, 1, Y, X) mean image (photon units), the level of the noise.
    noise : NoiseModel
        The movie's noise model.
    mean_var_factor : Tensor
        (B, 1, 1) or (B, Y, X): variance of the mean image's noise as a fraction of one
        frame's.

    Returns
    -------
    frame_sd, mean_sd : Tensor
        (B, 1, Y, X) each.
    """
    var = noise.variance_ratio * (torch.clamp(mean, min=0.0) + noise.read_noise_photons**2)
    sd = torch.sqrt(var)
    return sd, sd * torch.sqrt(mean_var_factor).unsqueeze(1)
