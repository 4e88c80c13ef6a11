"""Bayes: the prior from context, the likelihood from the pixel's own value, the posterior out.

Two steps, both on one chunk of frames in photon units:

1. **Surprise guard.** A point-estimate prior learns that thin processes never flash, and would
   erase a rare event. Pooled over a space-time window, the residual ``x - loc`` of a real
   event is far beyond what the noise allows, even where each pixel's own residual is not. We
   model the window's mean residual as ``0 + noise`` (no surprise) or ``delta + noise`` with
   ``delta`` from a broad slab (a surprise), with small prior odds. Where the posterior
   probability of a surprise is high, the prior's location moves by the local residual and its
   variance grows by that estimate's own uncertainty, so the interval widens where the data,
   not the network, decide. Every window leaves out the frame being denoised: the pixel's own
   value enters only through the likelihood.
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


def _shifted(x: torch.Tensor, offset: tuple[int, ...], fill: float) -> torch.Tensor:
    """``out[i] = x[i + offset]``, and ``fill`` where ``i + offset`` lies outside."""
    out = torch.full_like(x, fill)
    src, dst = [], []
    for n, d in zip(x.shape, offset, strict=True):
        src.append(slice(max(d, 0), n + min(d, 0)))
        dst.append(slice(max(-d, 0), n + min(-d, 0)))
    out[tuple(dst)] = x[tuple(src)]
    return out


@dataclass
class _WindowSums:
    """Sums of residual, variance and count over each guard window, and over its frame slice."""

    resid: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor
    slice_resid: torch.Tensor
    slice_var: torch.Tensor
    slice_count: torch.Tensor

    @classmethod
    def of(cls, resid: torch.Tensor, var: torch.Tensor, frames: int, pixels: int) -> _WindowSums:
        shape = tuple(resid.shape)
        return cls(
            window_sum(resid, frames, pixels),
            window_sum(var, frames, pixels),
            window_count(shape, frames, pixels, resid.device),
            window_sum(resid, 1, pixels),
            window_sum(var, 1, pixels),
            window_count(shape, 1, pixels, resid.device),
        )

    def zscore(self, offset: tuple[int, int, int], frames: int) -> torch.Tensor:
        """z-score, for the pixel at each position, of the window centred ``offset`` away.

        The slice of that window in the pixel's own frame is left out (when the window spans
        more than one frame), so the statistic holds no noise of the frame being denoised.
        """
        r = _shifted(self.resid, offset, 0.0)
        v = _shifted(self.var, offset, 0.0)
        n = _shifted(self.count, offset, 0.0)
        if frames > 1 and abs(offset[0]) <= frames // 2:
            own = (0, *offset[1:])
            r = r - _shifted(self.slice_resid, own, 0.0)
            v = v - _shifted(self.slice_var, own, 0.0)
            n = n - _shifted(self.slice_count, own, 0.0)
        # Windows centred outside the movie, or left empty, show no surprise.
        valid = (n > 0.5) & (v > 0)
        n = torch.clamp(n, min=1.0)
        z = (r / n) / torch.sqrt(torch.clamp(v, min=1e-12) / (n * n))
        return torch.where(valid, z, torch.zeros_like(z))


def window_zscores(resid: torch.Tensor, var: torch.Tensor, cfg: GuardConfig) -> torch.Tensor:
    """z-score of the window-mean residual under the no-surprise hypothesis (null sd 1).

    The window is centred on each pixel and leaves out the pixel's own frame (see
    :func:`surprise_guard`).
    """
    sums = _WindowSums.of(resid, var, cfg.window_frames, cfg.window_pixels)
    return sums.zscore((0, 0, 0), cfg.window_frames)


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

    The guarded prior of a pixel in frame ``t`` is built without any value of frame ``t``
    near it: the evidence windows leave out their slice of frame ``t`` and the local
    residual its frame-``t`` slice. The pixel's own value then enters only through the
    likelihood (it is not counted twice), and held-out residuals grouped by the guarded prior
    measure its error without selection bias.

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
    rho = cfg.slab_ratio
    base = math.log(cfg.prior_odds / (1 - cfg.prior_odds)) - 0.5 * math.log1p(rho)
    sums = _WindowSums.of(resid, var, cfg.window_frames, cfg.window_pixels)
    # Every pixel of a window that detected a surprise is handed to the data: the largest
    # surprise probability over the windows centred within the local window.
    z2 = torch.zeros_like(resid)
    ht, hp = cfg.local_frames // 2, cfg.local_pixels // 2
    for dt in range(-ht, ht + 1):
        for dy in range(-hp, hp + 1):
            for dx in range(-hp, hp + 1):
                z = sums.zscore((dt, dy, dx), cfg.window_frames)
                z2 = torch.maximum(z2, z * z)
    p = torch.sigmoid(base + 0.5 * z2 / null_scale**2 * rho / (1 + rho))
    # Local mean residual without the frame-t slice, and its variance.
    local = _WindowSums.of(resid, var, cfg.local_frames, cfg.local_pixels)
    m = torch.clamp(local.count - local.slice_count, min=1.0)
    r_loo = (local.resid - local.slice_resid) / m
    v_loo = (local.var - local.slice_var) / (m * m)
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
