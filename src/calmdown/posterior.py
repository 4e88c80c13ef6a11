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
from torch.nn import functional as F

from calmdown.config import GuardConfig

__all__ = ["GuardOutput", "gaussian_posterior", "guard_halo", "surprise_guard", "window_zscores"]


def guard_halo(cfg: GuardConfig) -> int:
    """Frames on each side the guard needs beyond the frames it outputs."""
    if not cfg.enabled:
        return 0
    return cfg.window_frames // 2 + cfg.local_frames // 2


def _box(x: torch.Tensor, frames: int, pixels: int) -> torch.Tensor:
    """Mean over a centred (frames, pixels, pixels) window, shrinking at the edges."""
    v = x[None, None]
    out = F.avg_pool3d(
        v,
        kernel_size=(frames, pixels, pixels),
        stride=1,
        padding=(frames // 2, pixels // 2, pixels // 2),
        count_include_pad=False,
    )
    return out[0, 0]


def _count(shape: tuple[int, ...], frames: int, pixels: int, device: torch.device) -> torch.Tensor:
    """Count the in-bounds elements of each centred window."""
    ones = torch.ones((1, 1, *shape), device=device)
    frac = F.avg_pool3d(
        ones,
        kernel_size=(frames, pixels, pixels),
        stride=1,
        padding=(frames // 2, pixels // 2, pixels // 2),
        count_include_pad=True,
    )
    return frac[0, 0] * (frames * pixels * pixels)


def window_zscores(resid: torch.Tensor, var: torch.Tensor, cfg: GuardConfig) -> torch.Tensor:
    """z-score of the window-mean residual under the no-surprise hypothesis (null sd 1)."""
    n = _count(tuple(resid.shape), cfg.window_frames, cfg.window_pixels, resid.device)
    mean_r = _box(resid, cfg.window_frames, cfg.window_pixels)
    null_var = _box(var, cfg.window_frames, cfg.window_pixels) / n
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
    p = F.max_pool3d(
        p[None, None],
        kernel_size=(cfg.local_frames, cfg.local_pixels, cfg.local_pixels),
        stride=1,
        padding=(cfg.local_frames // 2, cfg.local_pixels // 2, cfg.local_pixels // 2),
    )[0, 0]
    # Leave-one-out local mean residual and its variance.
    n = _count(tuple(x.shape), cfg.local_frames, cfg.local_pixels, x.device)
    sum_r = _box(resid, cfg.local_frames, cfg.local_pixels) * n
    sum_v = _box(var, cfg.local_frames, cfg.local_pixels) * n
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
