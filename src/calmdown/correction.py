"""Self-supervised correction of the prior by the residuals of its neighbours.

A context prior shrinks what it cannot see well toward the mean image: the rise of a soma's
transient, seen in frame ``t`` alone, comes out too small in every pixel of the soma at once.
Its errors are correlated over the soma, so the residuals ``x - loc`` of the neighbouring pixels
say how much it missed. We add back ``g * S``, where ``S`` is the mean residual over a window
around the pixel that leaves out the pixel itself (and, where registration correlated the noise
of neighbours, the whole noise-correlated core in frame ``t``), so ``S`` holds no noise of
``x[t, p]``. Then ``E[r * S] = E[e * S]`` for the prior error ``e``, and the least-squares gain
``g = sum(r * S) / sum(S**2)`` fitted on held-out frames is the MSE-optimal one, with no ground
truth (the Noise2Self argument). ``g`` is fitted per bin of the evidence ``|z|`` of a larger
window, so it is near zero where the residuals look like noise and near one where they show
that the prior missed something; bins without enough held-out pixels take the James-Stein gain
``1 - 1/z**2``. The prior variance is refitted per bin the same way, so intervals widen where the
correction acts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from calmdown.calibration import bin_index, isotonic
from calmdown.posterior import window_count, window_sum

__all__ = ["ResidualCorrection", "fit_correction"]

_Z_EDGES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_MIN_PIXELS = 2000


def _loo_mean(
    x: torch.Tensor, frames: int, pixels: int, core: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window sums of ``x`` without the core (frame t, core x core pixels), and their counts."""
    shape = tuple(x.shape)
    total = window_sum(x, frames, pixels) - window_sum(x, 1, core)
    count = window_count(shape, frames, pixels, x.device) - window_count(shape, 1, core, x.device)
    return total, torch.clamp(count, min=1.0)


@dataclass
class ResidualCorrection:
    """One fitted correction stage.

    Attributes
    ----------
    evidence : tuple of int
        (frames, pixels) of the window whose z-score selects the gain.
    local : tuple of int
        (frames, pixels) of the window whose mean residual is added back.
    core : int
        Side of the square left out in frame t (1: the pixel alone).
    gains : list of float
        Gain per |z| bin (bins split at ``z_edges``).
    var_factors : list of float
        Factor on the prior variance per |z| bin.
    z_edges : list of float
        Bin edges of |z|.
    """

    evidence: tuple[int, int]
    local: tuple[int, int]
    core: int
    gains: list[float]
    var_factors: list[float]
    z_edges: list[float]

    @property
    def halo(self) -> int:
        """Frames on each side this stage needs beyond those it corrects."""
        return max(self.evidence[0], self.local[0]) // 2

    def statistics(
        self, resid: torch.Tensor, var: torch.Tensor, noise_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Local mean residual, its noise variance, and the evidence z-score."""
        s_sum, s_n = _loo_mean(resid, *self.local, self.core)
        nv_sum, _ = _loo_mean(noise_var, *self.local, self.core)
        e_sum, e_n = _loo_mean(resid, *self.evidence, self.core)
        v_sum, _ = _loo_mean(var, *self.evidence, self.core)
        z = (e_sum / e_n) / torch.sqrt(v_sum / (e_n * e_n))
        return s_sum / s_n, nv_sum / (s_n * s_n), z

    def bins(self, z: torch.Tensor) -> torch.Tensor:
        """Bin index of each |z|."""
        return bin_index(z.abs(), self.z_edges)

    def apply(
        self,
        x: torch.Tensor,
        loc: torch.Tensor,
        prior_var: torch.Tensor,
        noise_var: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Corrected prior location and variance, and the evidence z-score."""
        shift, factor, added, z = self.terms(x, loc, prior_var, noise_var)
        return loc + shift, factor * prior_var + added, z

    def terms(
        self,
        x: torch.Tensor,
        loc: torch.Tensor,
        prior_var: torch.Tensor,
        noise_var: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return :meth:`apply`'s terms: ``loc + shift`` and ``factor * prior_var + added``.

        Also the evidence z-score. The factor is the bin's, the added variance the noise of
        the residual added back.
        """
        s, v_s, z = self.statistics(x - loc, prior_var + noise_var, noise_var)
        b = self.bins(z)
        g = torch.as_tensor(self.gains, dtype=x.dtype, device=x.device)[b]
        a = torch.as_tensor(self.var_factors, dtype=x.dtype, device=x.device)[b]
        return g * s, a, g * g * v_s, z

    def to_dict(self) -> dict[str, object]:
        """Plain types."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ResidualCorrection:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["evidence"] = tuple(values["evidence"])  # type: ignore[arg-type]
        values["local"] = tuple(values["local"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


def fit_correction(
    parts: list[tuple[torch.Tensor, ...]],
    *,
    evidence: tuple[int, int],
    local: tuple[int, int],
    core: int,
) -> ResidualCorrection:
    """Fit gains and variance factors on held-out frames.

    Parameters
    ----------
    parts : list of tuple
        ``(x, loc, prior_var, noise_var, target[, raw_noise_var])`` per run of consecutive
        frames: observed values, prior, noise variance at the prior's level, a boolean (T,)
        tensor of the frames that were never training targets (the others only provide
        neighbours), and optionally the noise variance estimated from each raw value itself,
        which is unbiased whatever the prior's bias and is then used to fit the variance.
    evidence, local : tuple of int
        (frames, pixels) windows.
    core : int
        Side of the square left out in frame t.

    Returns
    -------
    ResidualCorrection
    """
    n_bins = len(_Z_EDGES) + 1
    # One pass, per bin, of every sum both fits need: the variance's residual (r - g s)^2
    # expands into r*r, r*s and s*s once the gains g are known, so no run is kept.
    sums = np.zeros((n_bins, 7))  # n, r*s, s*s, r*r, noise var, prior var, v_s
    stage = ResidualCorrection(
        evidence, local, core, [0.0] * n_bins, [1.0] * n_bins, list(_Z_EDGES)
    )
    for x, loc, pv, nv, target, *rest in parts:
        s, v_s, z = stage.statistics(x - loc, pv + nv, nv)
        r, s_t, nv_fit, pv_t, v_t = (
            a[target].flatten().double() for a in (x - loc, s, rest[0] if rest else nv, pv, v_s)
        )
        b = stage.bins(z)[target].flatten()
        columns = (torch.ones_like(r), r * s_t, s_t * s_t, r * r, nv_fit, pv_t, v_t)
        for j, w in enumerate(columns):
            sums[:, j] += torch.bincount(b, weights=w, minlength=n_bins).cpu().numpy()
    centres = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 8.0]
    gains, factors = [], []
    for k in range(n_bins):
        n, rs, ss = sums[k, :3]
        if n >= _MIN_PIXELS and ss > 0:
            g = float(np.clip(rs / ss, 0.0, 1.0))
        else:
            g = max(0.0, 1.0 - 1.0 / centres[k] ** 2)
        gains.append(g)
        factors.append(1.0)
    stage.gains = gains
    # Variance: what the corrected prior still misses, beyond detector noise and the
    # correction's own noise, per bin.
    g = np.asarray(gains)
    n, rs, ss, rr, nvs, pvs, vss = sums.T
    res2 = rr - 2 * g * rs + g * g * ss
    noise = nvs + g * g * vss
    # Each bin's excess over noise is a small difference of large numbers at low light: pool
    # adjacent bins so that the missing variance never decreases as the evidence grows.
    excess = isotonic((res2 - noise) / np.maximum(n, 1.0), n)
    for k in range(n_bins):
        if n[k] >= _MIN_PIXELS and pvs[k] > 0:
            factors[k] = float(max(excess[k] / (pvs[k] / n[k]), 0.02))
    stage.var_factors = factors
    return stage
