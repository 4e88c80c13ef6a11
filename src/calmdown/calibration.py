"""Calibrating the prior's spread without ground truth, and checking it.

Detector noise is independent of the prior's error, so for any group of pixels chosen by what
the data show, ``E[(x - loc)^2] = E[prior error^2] + E[noise variance]``. On held-out frames
we therefore rescale the network's predicted prior variance per quantile bin of that variance:
the ranking the network learnt is kept, its level is corrected. The predictive distribution of
the raw value can then be checked on other held-out frames (interval coverage, PIT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

__all__ = ["ScaleCalibration", "fit_scale_calibration", "isotonic", "predictive_check"]


@dataclass
class ScaleCalibration:
    """Piecewise-constant factors on the prior variance, by bins of predicted variance.

    Attributes
    ----------
    edges : list of float
        Interior bin edges of the predicted prior variance (photon units squared).
    factors : list of float
        Multiplier of the prior variance in each bin (``len(edges) + 1`` of them).
    """

    edges: list[float]
    factors: list[float]

    def apply(self, prior_var: torch.Tensor) -> torch.Tensor:
        """Calibrated prior variance."""
        edges = torch.as_tensor(self.edges, dtype=prior_var.dtype, device=prior_var.device)
        factors = torch.as_tensor(self.factors, dtype=prior_var.dtype, device=prior_var.device)
        idx = torch.bucketize(prior_var.contiguous(), edges)
        return prior_var * factors[idx]

    def to_dict(self) -> dict[str, list[float]]:
        """Plain types."""
        return {"edges": list(self.edges), "factors": list(self.factors)}

    @classmethod
    def identity(cls) -> ScaleCalibration:
        """No change."""
        return cls(edges=[], factors=[1.0])


def fit_scale_calibration(
    prior_var: np.ndarray,
    resid2: np.ndarray,
    noise_var: np.ndarray,
    *,
    known_var: np.ndarray | None = None,
    n_bins: int = 10,
    min_factor: float = 0.02,
) -> ScaleCalibration:
    """Fit per-bin factors so that the prior variance matches the excess residual variance.

    Parameters
    ----------
    prior_var : ndarray
        Predicted prior variance per held-out pixel.
    resid2 : ndarray
        Squared residual ``(x - loc)**2`` of the same pixels.
    noise_var : ndarray
        Detector noise variance of the same pixels.
    known_var : ndarray, optional
        Part of the prior's error variance that is known and added on top of the calibrated
        one (the propagated input noise); the factors explain only the rest.
    n_bins : int
        Quantile bins of ``prior_var``.
    min_factor : float
        Smallest factor allowed (a bin whose residuals show no excess over noise).

    Returns
    -------
    ScaleCalibration
    """
    pv = np.asarray(prior_var, np.float64).ravel()
    r2 = np.asarray(resid2, np.float64).ravel()
    nv = np.asarray(noise_var, np.float64).ravel()
    if known_var is not None:
        nv = nv + np.asarray(known_var, np.float64).ravel()
    qs = np.quantile(pv, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = np.unique(qs)
    idx = np.searchsorted(edges, pv, side="left")
    n_b = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    safe = np.maximum(n_b, 1.0)
    excess = np.bincount(idx, weights=r2 - nv, minlength=len(edges) + 1) / safe
    mean_pv = np.bincount(idx, weights=pv, minlength=len(edges) + 1) / safe
    # Each bin's excess is a small difference of large numbers at low light: pool adjacent
    # bins so that the calibrated variance never decreases as the predicted one grows.
    smooth = isotonic(excess, n_b)
    factors = [
        float(max(e / max(m, 1e-12), min_factor)) if n > 0 else 1.0
        for e, m, n in zip(smooth, mean_pv, n_b, strict=True)
    ]
    return ScaleCalibration(edges=[float(e) for e in edges], factors=factors)


def isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted non-decreasing least-squares fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # value, weight, count
    for yi, wi in zip(y, w, strict=True):
        blocks.append([float(yi), float(max(wi, 1e-12)), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(c, v) for v, _, c in blocks])


def predictive_check(
    x: np.ndarray, loc: np.ndarray, pred_var: np.ndarray, *, level: float = 0.9
) -> dict[str, Any]:
    """Coverage of central predictive intervals of raw values, and PIT uniformity.

    Parameters
    ----------
    x : ndarray
        Held-out raw values (photon units).
    loc, pred_var : ndarray
        Predictive mean and variance (prior variance plus noise variance).
    level : float
        Nominal coverage of the central interval.

    Returns
    -------
    dict
        ``coverage`` (fraction of raw values inside), ``level``, ``pit_ks`` (Kolmogorov-Smirnov
        distance of the probability integral transform from uniform; 0 is perfect) and
        ``pit_hist`` (fraction of values in each of 10 equal PIT bins; 0.1 each is perfect).
    """
    z = (np.asarray(x) - np.asarray(loc)) / np.sqrt(np.asarray(pred_var))
    half = stats.norm.ppf(0.5 + level / 2)
    pit = stats.norm.cdf(z.ravel())
    ks = float(stats.kstest(pit, "uniform").statistic)
    hist = np.histogram(pit, bins=10, range=(0.0, 1.0))[0] / max(pit.size, 1)
    return {
        "coverage": float(np.mean(np.abs(z) <= half)),
        "level": level,
        "pit_ks": ks,
        "pit_hist": [float(h) for h in hist],
    }
