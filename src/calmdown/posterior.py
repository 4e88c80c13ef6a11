"""Bayes: the prior from context, the likelihood from the pixel's own value, the posterior out.

Two steps, both on one chunk of frames in photon units:

1. **Surprise guard.** A point-estimate prior learns that thin processes never flash, and would
   erase a rare event. Pooled over a space-time window, the residual ``x - loc`` of a real
   event is far beyond what the noise allows, even where each pixel's own residual is not. We
   model the window's mean residual as ``0 + noise`` (no surprise) or ``delta + noise`` with
   ``delta`` from a broad slab (a surprise), with small prior odds. Where the posterior
   probability of a surprise is high, the prior's location moves by the local (leave-one-out)
   residual and its variance grows by that estimate's own uncertainty, so the interval widens
   where the data, not the network, decide.
2. **Posterior.** The (guarded) prior ``N(loc, var)`` times the pixel's Poisson-Gaussian
   likelihood, with the noise variance taken at the prior's location: the posterior mean is
   the denoised value, the posterior variance gives credible intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from calmdown.config import GuardConfig

__all__ = ["GuardOutput", "gaussian_posterior", "guard_halo", "surprise_guard", "window_zscores"]


def guard_halo(cfg: GuardConfig) -> int:
    """Frames on each side the guard needs beyond the frames it outputs."""
    if not cfg.enabled:
        return 0
    return cfg.window_frames // 2 + cfg.local_frames // 2


def _window_sum_1d(x: torch.Tensor, dim: int, half: int) -> torch.Tensor:
    """Sum over ``[i - half, i + half]`` along ``dim``, clipped at the ends.

    Zero padding and one cumulative sum: the cost does not depend on ``half``.
    """
    if half == 0:
        return x
    n = x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = half + 1
    lead = x.new_zeros(pad_shape)
    pad_shape[dim] = half
    c = torch.cumsum(torch.cat([lead, x, x.new_zeros(pad_shape)], dim=dim), dim=dim)
    return c.narrow(dim, 2 * half + 1, n) - c.narrow(dim, 0, n)


def window_sum(x: torch.Tensor, frames: int, pixels: int) -> torch.Tensor:
    """Sum over a centred (frames, pixels, pixels) window of a (T, Y, X) tensor."""
    out = _window_sum_1d(x, 0, frames // 2)
    out = _window_sum_1d(out, 1, pixels // 2)
    return _window_sum_1d(out, 2, pixels // 2)


def window_count(
    shape: tuple[int, ...], frames: int, pixels: int, device: torch.device
) -> torch.Tensor:
    """Count the in-bounds elements of each centred window (exact, no summing)."""
    counts = []
    for n, half in zip(shape, (frames // 2, pixels // 2, pixels // 2), strict=True):
        i = torch.arange(n, device=device)
        counts.append((torch.clamp(i + half, max=n - 1) - torch.clamp(i - half, min=0) + 1).float())
    return counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]


def _window_max(x: torch.Tensor, frames: int, pixels: int) -> torch.Tensor:
    """Maximum over a centred (frames, pixels, pixels) window, shrinking at the edges."""
    out = x
    for dim, half in ((0, frames // 2), (1, pixels // 2), (2, pixels // 2)):
        n = out.shape[dim]
        acc = out.clone()
        for shift in range(1, min(half, n - 1) + 1):
            fwd = out.narrow(dim, shift, n - shift)
            bwd = out.narrow(dim, 0, n - shift)
            head = acc.narrow(dim, 0, n - shift)
            head.copy_(torch.maximum(head, fwd))
            tail = acc.narrow(dim, shift, n - shift)
            tail.copy_(torch.maximum(tail, bwd))
        out = acc
    return out


def window_zscores(resid: torch.Tensor, var: torch.Tensor, cfg: GuardConfig) -> torch.Tensor:
    """z-score of the window-mean residual under the no-surprise hypothesis (null sd 1)."""
    n = window_count(tuple(resid.shape), cfg.window_frames, cfg.window_pixels, resid.device)
    mean_r = window_sum(resid, cfg.window_frames, cfg.window_pixels) / n
    null_var = window_sum(var, cfg.window_frames, cfg.window_pixels) / (n * n)
    return mean_r / torch.sqrt(null_var)


@dataclass
class GuardOutput:
    """Guarded prior and the surprise probability (all (T, Y, X) tensors)."""

    loc: torch.Tensor
    var: torch.Tensor
    p_surprise: torch.Tensor


def surprise_guard(
    x: torch.Tensor,
    loc: torch.Tensor,
    prior_var: torch.Tensor,
    noise_var: torch.Tensor,
    cfg: GuardConfig,
    *,
    null_scale: float = 1.0,
) -> GuardOutput:
    """Let the data override the prior where they disagree with it beyond noise.

    Parameters
    ----------
    x : Tensor
        (T, Y, X) observed frames, photon units.
    loc, prior_var : Tensor
        Prior location and (calibrated) variance.
    noise_var : Tensor
        Detector noise variance.
    cfg : GuardConfig
        Windows and prior odds.
    null_scale : float
        Standard deviation of the window z-score on held-out frames (prior errors are
        correlated, so it exceeds 1); z-scores are divided by it.

    Returns
    -------
    GuardOutput
    """
    if not cfg.enabled:
        return GuardOutput(loc=loc, var=prior_var, p_surprise=torch.zeros_like(loc))
    resid = x - loc
    var = prior_var + noise_var
    z = window_zscores(resid, var, cfg) / null_scale
    rho = cfg.slab_ratio
    log_odds = (
        math.log(cfg.prior_odds / (1 - cfg.prior_odds))
        - 0.5 * math.log1p(rho)
        + 0.5 * z * z * rho / (1 + rho)
    )
    p = torch.sigmoid(log_odds)
    # Every pixel of a window that detected a surprise is handed to the data.
    p = _window_max(p, cfg.local_frames, cfg.local_pixels)
    # Leave-one-out local mean residual and its variance.
    n = window_count(tuple(x.shape), cfg.local_frames, cfg.local_pixels, x.device)
    sum_r = window_sum(resid, cfg.local_frames, cfg.local_pixels)
    sum_v = window_sum(var, cfg.local_frames, cfg.local_pixels)
    m = torch.clamp(n - 1, min=1)
    r_loo = (sum_r - resid) / m
    v_loo = (sum_v - var) / (m * m)
    shrink = rho / (1 + rho)
    new_loc = loc + p * shrink * r_loo
    new_var = prior_var + p * v_loo + p * (1 - p) * (shrink * r_loo) ** 2
    return GuardOutput(loc=new_loc, var=new_var, p_surprise=p)


def gaussian_posterior(
    x: torch.Tensor, loc: torch.Tensor, prior_var: torch.Tensor, noise_var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and variance of a Gaussian prior times a Gaussian likelihood.

    Parameters
    ----------
    x : Tensor
        Observed values.
    loc, prior_var : Tensor
        Prior.
    noise_var : Tensor
        Likelihood variance (the noise variance at the prior location).

    Returns
    -------
    mean, var : Tensor
    """
    w = prior_var / (prior_var + noise_var)
    return loc + w * (x - loc), w * noise_var
