"""Joint Monte-Carlo samples of the clean movie: errors correlated as the model's really are.

A denoised pixel's error is not independent of its neighbours': the prior misses a soma's
transient in all its pixels at once, and the static part of the prior (the mean image) is wrong
the same way in every frame. An ROI trace averaged over independent pixel errors would get a
corridor far too narrow. We model the posterior error as ``sd * u`` with ``sd`` the per-pixel
posterior standard deviation and ``u`` a unit-variance Gaussian field, stationary in space and
time, made of two independent parts:

* a static part, of variance ``s``, the same in every frame, with spatial correlation
  ``rho_0(dy, dx)``: the error of the static morphology, which comes mostly from the mean
  image's own noise and so is nearly independent between pixels;
* a changing part, of variance ``1 - s``, with spatial correlation ``rho_s(dy, dx)`` and
  lag-``L`` correlation ``a**L``: the prior missing what the frame shows, over a soma at once.

Both are measured without ground truth from held-out residuals ``x - loc``. Detector noise is
independent of the prior's error, independent between frames, and independent between pixels
apart from the neighbour correlation the noise model measured (subtracted), so

* cross-products of residuals at least :data:`STATIC_GAP` frames apart measure the static part's
  covariance (``s`` at the pixel, ``rho_0`` between pixels);
* same-frame cross-products between pixels measure the sum of both parts' covariances, from
  which the static part's is taken;
* cross-products at lags beyond the context (the prior of frame t uses frames t +- K, whose
  noise would otherwise enter) give ``a``.

The two parts' spatial correlations differ: in simulated movies the static error's neighbour
correlation is 0.02-0.19 and the changing error's 0.55-0.71. One correlation for both (the
format of model files before this one) makes the static part as smooth as the changing part, so
an ROI's samples share a constant error that the truth does not have.

Sampling filters white noise by the square root of each correlation's spectrum and runs an AR(1)
recursion in time for the changing part, per frame seeded by (seed, sample, frame), so samples
are reproducible and do not depend on how the movie is chunked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ErrorCorrelation", "MeanNoiseCoupling", "SampleStream", "estimate_error_correlation"]

RADIUS = 4
"""Spatial lags measured and filtered: -RADIUS..RADIUS pixels on each axis."""

STATIC_GAP = 24
"""Frames apart beyond which residual cross-products measure the static error. In simulated
movies the error's correlation falls from 0.79-0.94 at one frame to within 0.10-0.15 of its
long-run value at 20 frames and within 0.005-0.035 at 50; the pairs measured lie 24 frames
apart and more within one run of predicted frames (80-220 frames)."""

MAX_STATIC = 0.95
"""Largest static share: the changing part always keeps some variance."""


@dataclass
class ErrorCorrelation:
    """Space-time correlation of the posterior error.

    Attributes
    ----------
    spatial : list of list of float
        ``rho_s``, the changing part's spatial correlation, on a ``(2R+1, 2R+1)`` grid of
        lags, 1 at the centre.
    static : float
        ``s``: fraction of the error variance that does not change over time.
    decay : float
        ``a``: lag-1 correlation of the changing part.
    static_spatial : list of list of float, optional
        ``rho_0``, the static part's spatial correlation (same grid). None: ``rho_s`` (model
        files made before the two were measured apart).
    """

    spatial: list[list[float]] = field(default_factory=lambda: _identity_grid())
    static: float = 0.0
    decay: float = 0.0
    static_spatial: list[list[float]] | None = None

    def kernel(self, static: bool = False) -> torch.Tensor:
        """Return the filter that gives white noise unit variance and a part's correlation.

        The changing part's (``rho_s``), or with ``static`` the static part's (``rho_0``).
        """
        grid = self.static_spatial if static and self.static_spatial is not None else self.spatial
        rho = np.asarray(grid, np.float64)
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
        out: dict[str, object] = {
            "spatial": self.spatial,
            "static": self.static,
            "decay": self.decay,
        }
        if self.static_spatial is not None:
            out["static_spatial"] = self.static_spatial
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ErrorCorrelation:
        """Inverse of :meth:`to_dict`."""
        return cls(
            spatial=[list(map(float, row)) for row in data["spatial"]],  # type: ignore[union-attr]
            static=float(data["static"]),  # type: ignore[arg-type]
            decay=float(data["decay"]),  # type: ignore[arg-type]
            static_spatial=None
            if data.get("static_spatial") is None
            else [list(map(float, row)) for row in data["static_spatial"]],  # type: ignore[union-attr]
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


def _shifted_products(
    r: torch.Tensor, dy: int, dx: int, other: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of ``r[..., y, x] * other[..., y + dy, x + dx]`` over valid pixels.

    ``other`` defaults to ``r``.
    """
    other = r if other is None else other
    h, w = r.shape[-2:]
    a = r[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    b = other[..., max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
    return (a * b).sum(), torch.tensor(float(a.numel()))


def _lag_grid(
    r: torch.Tensor, other: torch.Tensor | None = None, *, centre: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return :func:`_shifted_products`' sums and counts on the grid of spatial lags.

    ``centre=False`` leaves the zero lag at 0 (a pixel's product with itself holds its noise).
    """
    n = 2 * RADIUS + 1
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    for dy in range(-RADIUS, RADIUS + 1):
        for dx in range(-RADIUS, RADIUS + 1):
            if not centre and dy == 0 and dx == 0:
                continue
            s, c = _shifted_products(r, dy, dx, other)
            sums[dy + RADIUS, dx + RADIUS] = float(s)
            counts[dy + RADIUS, dx + RADIUS] = float(c)
    return sums, counts


def _static_products(r: torch.Tensor, gap: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Return sums and counts, per spatial lag, of products of residuals ``>= gap`` frames apart.

    ``r`` is (T, Y, X). Every pair of frames at least ``gap`` apart counts once in each order
    (so the grid is symmetric under ``(dy, dx) -> (-dy, -dx)``); the later frames are summed
    first, so the cost is one product per spatial lag. None when no pair is that far apart.
    """
    t_len = r.shape[0]
    if t_len <= gap:
        return None
    # later[t] = sum of r over frames t + gap .. T - 1, for t = 0 .. T - gap - 1.
    later = torch.flip(torch.cumsum(torch.flip(r, [0]), 0), [0])[gap:]
    first = r[: t_len - gap]
    m = t_len - gap
    sums, counts = _lag_grid(first, later)
    counts *= (m + 1) / 2  # m frames x pixels -> m (m + 1) / 2 pairs of frames x pixels
    return sums + sums[::-1, ::-1], counts + counts[::-1, ::-1]


class MeanNoiseCoupling:
    """How much of a frame's noise reaches the prior of other frames through the mean image.

    The mean image given for frame ``t'`` averages every frame but ``t'``, frame ``t``'s noise
    ``n_t`` among them, and the prior passes it on: ``E[n_t(p) e_t'(p + d)] = C(d) = J(p + d
    <- p) var_m(p)``, with ``J`` the prior's derivative in the mean image and ``var_m`` the
    mean image's noise variance. Residual cross-products of two frames then read ``C(d) +
    C(-d)`` below the prior's error covariance: in simulated movies ``C(0)`` is about
    ``nv / N`` (N frames averaged), 0.4-0.75 times the static error's own covariance, so the
    static part measured without it comes out near zero or negative. The noise probes (see
    :mod:`calmdown.propagation`) perturb the mean image by ``eps * sd_m * z``; the products
    ``sd_m z(p) * dloc(p + d) / eps`` average to ``C(d)``.
    """

    def __init__(self) -> None:
        n = 2 * RADIUS + 1
        self.sums = np.zeros((n, n))
        self.counts = np.zeros((n, n))

    def add(self, perturbation: torch.Tensor, response: torch.Tensor) -> None:
        """Add probed frames: ``sd_m * z`` (N, Y, X) and the prior's response over ``eps``."""
        sums, counts = _lag_grid(perturbation.double(), response.double())
        self.sums += sums
        self.counts += counts

    def grid(self) -> np.ndarray | None:
        """``C(d)`` on the grid of lags (photons squared), or None before any probe."""
        if not self.counts[RADIUS, RADIUS]:
            return None
        return self.sums / np.maximum(self.counts, 1.0)


def estimate_error_correlation(
    parts: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    noise_correlation: tuple[float, float],
    context_frames: int,
    max_lag: int = 8,
    mean_coupling: np.ndarray | None = None,
) -> ErrorCorrelation:
    """Fit the error correlation on held-out frames.

    Parameters
    ----------
    parts : iterable of tuple
        ``(resid, prior_var, noise_var, target)`` per run of consecutive frames (read once):
        the residual ``x - loc`` of the prior, its calibrated variance, the noise variance
        (T, Y, X) and a boolean (T,) tensor of held-out frames.
    noise_correlation : (float, float)
        Neighbour correlation of the detector noise along y and x (from the noise model).
    context_frames : int
        K: temporal lags up to K are skipped (the prior saw those frames' noise).
    max_lag : int
        Longest temporal lag used beyond K.
    mean_coupling : ndarray, optional
        :meth:`MeanNoiseCoupling.grid`: what the mean image passes of one frame's noise to
        the prior of the others. Without it the static part cannot be told from it, and one
        spatial correlation is fitted to both parts, the static share from temporal lags of
        up to ``K + max_lag`` frames (model files before this one).

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
    static_sums, static_counts = np.zeros((n, n)), np.zeros((n, n))
    # Frames this far apart share no noise, not even through the frames the prior saw.
    gap = max(STATIC_GAP, 2 * context_frames + 1)
    nv_mean = 0.0
    for resid, pvar, nvar, target in parts:
        sel = target.nonzero().flatten()
        if sel.numel() == 0:
            continue
        r = resid[sel].double()
        pv_sum += float(pvar[sel].double().sum())
        pv_n += float(pvar[sel].numel())
        nv_mean += float(nvar[sel].double().sum())
        part_sums, part_counts = _lag_grid(r, centre=False)
        sums += part_sums
        counts += part_counts
        # Temporal lags beyond the context, over every predicted frame of the run.
        full = resid.double()
        t_len = full.shape[0]
        for lag in range(context_frames + 1, context_frames + 1 + max_lag):
            j = lag - context_frames
            if lag >= t_len or j > max_lag:
                break
            lag_sums[j] += float((full[:-lag] * full[lag:]).sum())
            lag_counts[j] += float(full[:-lag].numel())
        # Of use only where the mean image's coupling is known (see below).
        products = None if mean_coupling is None else _static_products(full, gap)
        if products is not None:
            static_sums += products[0]
            static_counts += products[1]
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
    lags = np.arange(context_frames + 1, context_frames + 1 + max_lag)
    ok = lag_counts[1:] > 0
    # Products of two frames read C(d) + C(-d) below the prior's error covariance.
    coupled = (
        np.zeros((n, n)) if mean_coupling is None else mean_coupling + mean_coupling[::-1, ::-1]
    )
    rho_t = lag_sums[1:][ok] / np.maximum(lag_counts[1:][ok], 1) + coupled[RADIUS, RADIUS]
    rho_t = np.clip(rho_t / max(mean_pv, 1e-12), 0.0, 1.0)
    static_cov = coupled + np.divide(
        static_sums, static_counts, out=np.zeros_like(static_sums), where=static_counts > 0
    )
    if (
        mean_coupling is None
        or static_counts[RADIUS, RADIUS] == 0
        or static_cov[RADIUS, RADIUS] <= 0
    ):
        # Without the mean image's coupling (no probes), or with runs too short, the static
        # part cannot be measured apart: one correlation for both parts, the static share
        # from the temporal lags alone.
        rho_fit = _fit_spatial(np.clip(cov / max(mean_pv, 1e-12), -1.0, 1.0))
        static, decay = _fit_temporal(lags[ok], rho_t) if ok.any() else (0.0, 0.0)
        return ErrorCorrelation(spatial=rho_fit, static=static, decay=decay)
    static = float(np.clip(static_cov[RADIUS, RADIUS] / max(mean_pv, 1e-12), 0.0, MAX_STATIC))
    static_rho = _fit_spatial(np.clip(static_cov / static_cov[RADIUS, RADIUS], -1.0, 1.0))
    # Same-frame covariances hold both parts; the changing part's is what the static leaves.
    changing = (cov - static * mean_pv * np.asarray(static_rho)) / ((1.0 - static) * mean_pv)
    rho_fit = _fit_spatial(np.clip(changing, -1.0, 1.0))
    decay = _fit_decay(lags[ok], rho_t, static) if ok.any() else 0.0
    return ErrorCorrelation(spatial=rho_fit, static=static, decay=decay, static_spatial=static_rho)


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


def _fit_decay(lags: np.ndarray, rho: np.ndarray, static: float) -> float:
    """Least-squares ``a`` of ``rho(L) = s + (1 - s) * a**L`` with ``s`` given."""
    grid = np.linspace(0.0, 0.995, 200)
    model = static + (1.0 - static) * grid[:, None] ** lags.astype(float)[None]
    return float(grid[np.argmin(np.sum((model - rho[None]) ** 2, axis=1))])


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
    pixels : ndarray or Tensor, optional
        (Y, X) boolean mask: keep the fields of these pixels only, in row-major order (the
        values are those of the whole frame's fields there; the recursion in time then runs
        on these pixels alone).
    """

    def __init__(
        self,
        correlation: ErrorCorrelation,
        n: int,
        shape: tuple[int, int],
        seed: int,
        device: torch.device,
        pixels: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        self.corr = correlation
        self.n = n
        self.shape = shape
        self.seed = seed
        self.device = device
        self.pixels = None
        if pixels is not None:
            mask = torch.as_tensor(np.asarray(pixels, dtype=bool), device=device)
            if tuple(mask.shape) != tuple(shape):
                raise ValueError(f"a pixel mask of shape {tuple(mask.shape)} for {shape} frames")
            self.pixels = mask.reshape(-1).nonzero().squeeze(1)
        # The same filter for every sample, as a depthwise convolution (groups = samples):
        # the same sums as one channel's filter over a batch, to the bit, and ~9x faster on
        # a CPU (oneDNN, 64 samples of 512 x 512).
        self._kernel = correlation.kernel().to(device)[None, None].expand(n, 1, -1, -1)
        static = correlation.kernel(static=True).to(device)[None, None].expand(n, 1, -1, -1)
        self._static = self._field(-1, static)
        self._state: torch.Tensor | None = None
        self._next = 0

    def _field(self, frame: int, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Return one frame's spatially correlated unit white noise: (n, Y, X), or (n, P).

        (n, P): the pixel mask's pixels. Frame -1 is the static part's. ``kernel`` filters
        it (default: the changing part's).
        """
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + (frame + 2) * 7919) % (2**63 - 1)
        )
        z = torch.randn((1, self.n, *self.shape), generator=gen).to(self.device)
        r = RADIUS
        z = F.conv2d(
            F.pad(z, (r, r, r, r), mode="reflect" if min(self.shape) > r else "replicate"),
            (self._kernel if kernel is None else kernel).contiguous(),
            groups=self.n,
        )[0]
        if self.pixels is not None:
            return z.reshape(self.n, -1).index_select(1, self.pixels)
        return z

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """Fields of frames ``start..stop``: (n, stop - start, Y, X), or (n, stop - start, P).

        (n, stop - start, P): the pixel mask's pixels.

        Frames must be asked for in order; a jump forward (or a first call after frame 0)
        runs the recursion from up to 64 frames before, which forgets the rest.
        """
        a, s = self.corr.decay, self.corr.static
        c = math.sqrt(1 - a * a)
        # Written in place, frame by frame, into one array (each step allocated three, and
        # the frames were stacked): a * state + c * field, the same operations to the bit.
        dynamic = torch.empty(
            (self.n, stop - start, *self._static.shape[1:]),
            dtype=self._static.dtype,
            device=self._static.device,
        )
        state = self._state
        if state is None or start != self._next:
            burn = max(0, start - 64)
            state = self._field(burn)
            for t in range(burn + 1, start + 1):
                state.mul_(a).add_(self._field(t).mul_(c))
            dynamic[:, 0] = state
            first = start + 1
        else:
            first = start
        for t in range(first, stop):
            prev = dynamic[:, t - start - 1] if t > start else state
            torch.mul(prev, a, out=dynamic[:, t - start]).add_(self._field(t).mul_(c))
        self._state = dynamic[:, -1].clone()
        self._next = stop
        return dynamic.mul_(math.sqrt(1 - s)).add_(math.sqrt(s) * self._static[:, None])
