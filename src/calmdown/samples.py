"""Joint Monte-Carlo samples of the clean movie: errors correlated as the model's really are.

A denoised pixel's error is not independent of its neighbours': the prior misses a soma's
transient in all its pixels at once, and the static part of the prior (the mean image) is wrong
the same way in every frame. An ROI trace averaged over independent pixel errors would get a
corridor far too narrow. We model the posterior error as ``sd * u`` with ``sd`` the per-pixel
posterior standard deviation and ``u`` a unit-variance Gaussian field that is stationary in
space and time, with a separable correlation ``rho_s(dy, dx) * rho_t(dt)``:

* ``rho_s`` is measured without ground truth from same-frame cross-products of held-out
  residuals ``x - loc``: detector noise is independent of the prior's error, and independent
  between pixels apart from the neighbour correlation the noise model measured (subtracted),
  so ``E[r_i r_j] = cov(e_i, e_j)`` for ``i != j``.
* ``rho_t(dt) = s + (1 - s) * a**dt``: a static part (the mean image's error) and a part that
  decays. ``s`` and ``a`` are fitted to cross-products at lags beyond the context (the prior of
  frame t uses frames t +- K, whose noise would otherwise enter).

Sampling filters white noise by the square root of ``rho_s``'s spectrum and runs an AR(1)
recursion in time, per frame seeded by (seed, sample, frame), so samples are reproducible and do
not depend on how the movie is chunked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ErrorCorrelation", "SampleStream", "estimate_error_correlation"]

RADIUS = 4
"""Spatial lags measured and filtered: -RADIUS..RADIUS pixels on each axis."""


@dataclass
class ErrorCorrelation:
    """Space-time correlation of the posterior error.

    Attributes
    ----------
    spatial : list of list of float
        ``rho_s`` on a ``(2R+1, 2R+1)`` grid of lags, 1 at the centre.
    static : float
        ``s``: fraction of the error variance that does not change over time.
    decay : float
        ``a``: lag-1 correlation of the changing part.
    """

    spatial: list[list[float]] = field(default_factory=lambda: _identity_grid())
    static: float = 0.0
    decay: float = 0.0

    def kernel(self) -> torch.Tensor:
        """Filter whose output, from unit white noise, has correlation ``rho_s`` (unit var)."""
        rho = np.asarray(self.spatial, np.float64)
        size = 4 * (2 * RADIUS + 1)
        grid = np.zeros((size, size))
        r = RADIUS
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                grid[dy % size, dx % size] = rho[dy + r, dx + r]
        spec = np.clip(np.fft.fft2(grid).real, 0.0, None)
        k = np.fft.ifft2(np.sqrt(spec)).real
        k = np.fft.fftshift(k)
        c = size // 2
        k = k[c - r : c + r + 1, c - r : c + r + 1]
        k /= math.sqrt(float((k**2).sum()))
        return torch.from_numpy(k.astype(np.float32))

    def to_dict(self) -> dict[str, object]:
        """Plain types."""
        return {"spatial": self.spatial, "static": self.static, "decay": self.decay}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ErrorCorrelation:
        """Inverse of :meth:`to_dict`."""
        return cls(
            spatial=[list(map(float, row)) for row in data["spatial"]],  # type: ignore[union-attr]
            static=float(data["static"]),  # type: ignore[arg-type]
            decay=float(data["decay"]),  # type: ignore[arg-type]
        )

    @classmethod
    def independent(cls) -> ErrorCorrelation:
        """Errors independent between pixels and frames (for comparison)."""
        return cls()


def _identity_grid() -> list[list[float]]:
    n = 2 * RADIUS + 1
    grid = np.zeros((n, n))
    grid[RADIUS, RADIUS] = 1.0
    return grid.tolist()


def _shifted_products(r: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of ``r[..., y, x] * r[..., y + dy, x + dx]`` over valid pixels."""
    h, w = r.shape[-2:]
    a = r[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    b = r[..., max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
    return (a * b).sum(), torch.tensor(float(a.numel()))


def estimate_error_correlation(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    noise_correlation: tuple[float, float],
    context_frames: int,
    max_lag: int = 8,
) -> ErrorCorrelation:
    """Fit the error correlation on held-out frames.

    Parameters
    ----------
    parts : list of tuple
        ``(resid, prior_var, noise_var, target)`` per run of consecutive frames: the residual
        ``x - loc`` of the prior, its calibrated variance, the noise variance (T, Y, X) and a
        boolean (T,) tensor of held-out frames.
    noise_correlation : (float, float)
        Neighbour correlation of the detector noise along y and x (from the noise model).
    context_frames : int
        K: temporal lags up to K are skipped (the prior saw those frames' noise).
    max_lag : int
        Longest temporal lag used beyond K.

    Returns
    -------
    ErrorCorrelation
    """
    n = 2 * RADIUS + 1
    sums = np.zeros((n, n))
    counts = np.zeros((n, n))
    pv_sum, pv_n = 0.0, 0.0
    lag_sums = np.zeros(max_lag + 1)
    lag_counts = np.zeros(max_lag + 1)
    nv_mean = 0.0
    for resid, pvar, nvar, target in parts:
        sel = target.nonzero().flatten()
        if sel.numel() == 0:
            continue
        r = resid[sel].double()
        pv_sum += float(pvar[sel].double().sum())
        pv_n += float(pvar[sel].numel())
        nv_mean += float(nvar[sel].double().sum())
        for dy in range(-RADIUS, RADIUS + 1):
            for dx in range(-RADIUS, RADIUS + 1):
                if dy == 0 and dx == 0:
                    continue
                s, c = _shifted_products(r, dy, dx)
                sums[dy + RADIUS, dx + RADIUS] += float(s)
                counts[dy + RADIUS, dx + RADIUS] += float(c)
        # Temporal lags beyond the context, over every predicted frame of the run.
        full = resid.double()
        t_len = full.shape[0]
        for lag in range(context_frames + 1, context_frames + 1 + max_lag):
            j = lag - context_frames
            if lag >= t_len or j > max_lag:
                break
            lag_sums[j] += float((full[:-lag] * full[lag:]).sum())
            lag_counts[j] += float(full[:-lag].numel())
    if pv_n == 0:
        return ErrorCorrelation.independent()
    mean_pv = pv_sum / pv_n
    mean_nv = nv_mean / pv_n
    cov = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    # The detector's own neighbour covariance is not the prior's.
    ry, rx = noise_correlation
    cov[RADIUS - 1, RADIUS] -= ry * mean_nv
    cov[RADIUS + 1, RADIUS] -= ry * mean_nv
    cov[RADIUS, RADIUS - 1] -= rx * mean_nv
    cov[RADIUS, RADIUS + 1] -= rx * mean_nv
    rho = np.clip(cov / max(mean_pv, 1e-12), -1.0, 1.0)
    rho_fit = _fit_spatial(rho)
    lags = np.arange(context_frames + 1, context_frames + 1 + max_lag)
    ok = lag_counts[1:] > 0
    static, decay = 0.0, 0.0
    if ok.any():
        rho_t = np.clip(lag_sums[1:][ok] / lag_counts[1:][ok] / max(mean_pv, 1e-12), 0.0, 1.0)
        static, decay = _fit_temporal(lags[ok], rho_t)
    return ErrorCorrelation(spatial=rho_fit, static=static, decay=decay)


def _fit_spatial(rho: np.ndarray) -> list[list[float]]:
    """Smooth a noisy correlation grid: ``A * exp(-r / l)`` off the centre, 1 at it.

    Single lags are noisy (a small difference of large numbers at low light), and a grid of
    independent estimates need not be a valid correlation; the isotropic exponential with a
    nugget ``1 - A`` (pixel-independent error) always is.
    """
    d = np.arange(-RADIUS, RADIUS + 1)
    r = np.hypot(d[:, None], d[None, :])
    off = r > 0
    best = (np.inf, 0.0, 1.0)
    for length in np.geomspace(0.2, 20.0, 120):
        basis = np.exp(-r[off] / length)
        amp = float(np.clip(np.dot(rho[off], basis) / np.dot(basis, basis), 0.0, 1.0))
        err = float(np.sum((amp * basis - rho[off]) ** 2))
        if err < best[0]:
            best = (err, amp, float(length))
    _, amp, length = best
    grid = amp * np.exp(-r / length)
    grid[~off] = 1.0
    return grid.tolist()


def _fit_temporal(lags: np.ndarray, rho: np.ndarray) -> tuple[float, float]:
    """Least-squares ``rho(L) = s + (1 - s) * a**L`` over a grid of (s, a)."""
    best = (np.inf, 0.0, 0.0)
    for a in np.linspace(0.0, 0.995, 200):
        basis = a ** lags.astype(float)
        # rho - basis = s * (1 - basis): closed-form s, clipped to [0, 1].
        d = 1.0 - basis
        s = float(np.clip(np.dot(rho - basis, d) / max(np.dot(d, d), 1e-12), 0.0, 1.0))
        err = float(np.sum((s + (1 - s) * basis - rho) ** 2))
        if err < best[0]:
            best = (err, s, float(a))
    return best[1], best[2]


class SampleStream:
    """Unit-variance correlated error fields for consecutive frames, for ``n`` samples.

    Parameters
    ----------
    correlation : ErrorCorrelation
        The model's error correlation.
    n : int
        Number of samples.
    shape : (int, int)
        Frame shape.
    seed : int
        Seed: the same seed gives the same fields.
    device : torch.device
        Where to make them.
    """

    def __init__(
        self,
        correlation: ErrorCorrelation,
        n: int,
        shape: tuple[int, int],
        seed: int,
        device: torch.device,
    ) -> None:
        self.corr = correlation
        self.n = n
        self.shape = shape
        self.seed = seed
        self.device = device
        self._kernel = correlation.kernel().to(device)[None, None]
        self._static = self._field(-1)
        self._state: torch.Tensor | None = None
        self._next = 0

    def _field(self, frame: int) -> torch.Tensor:
        """(n, Y, X) spatially correlated unit white noise for one frame."""
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + (frame + 2) * 7919) % (2**63 - 1)
        )
        z = torch.randn((self.n, 1, *self.shape), generator=gen).to(self.device)
        r = RADIUS
        z = F.conv2d(
            F.pad(z, (r, r, r, r), mode="reflect" if min(self.shape) > r else "replicate"),
            self._kernel,
        )
        return z[:, 0]

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """Fields of frames ``start..stop``: (n, stop - start, Y, X).

        Frames must be asked for in order; a jump forward (or a first call after frame 0)
        runs the recursion from up to 64 frames before, which forgets the rest.
        """
        a, s = self.corr.decay, self.corr.static
        if self._state is None or start != self._next:
            burn = max(0, start - 64)
            self._state = self._field(burn)
            for t in range(burn + 1, start):
                self._state = a * self._state + math.sqrt(1 - a * a) * self._field(t)
            if start > burn:
                self._state = a * self._state + math.sqrt(1 - a * a) * self._field(start)
            first = start + 1
            out = [self._state]
        else:
            first, out = start, []
        for t in range(first, stop):
            self._state = a * self._state + math.sqrt(1 - a * a) * self._field(t)
            out.append(self._state)
        self._next = stop
        dynamic = torch.stack(out, dim=1)
        return math.sqrt(s) * self._static[:, None] + math.sqrt(1 - s) * dynamic
