"""How much of the prior's departure from the mean image the data confirm, as a variance.

Where the context network's prediction departs from the mean image, either the clean signal
departed (a transient the context frames show) or the network's output fluctuated with the
noise of its inputs. At a few photons the second is common in dim pixels: on a sparse movie at
0.5 photons (700 steps), pixels of the dim half whose prior departed by 1-3 of its stated sd
held a clean value that followed 5-15 % of that departure, and their error was 2-12 times the
stated variance; the calibration stages cannot see this (their held-out factors there are known
to +-100 %).

The data can: a pixel's own value ``x`` is an unbiased, independent measurement of its clean
value (the network never sees it, and the mean image it is given leaves it out), so the
least-squares slope of ``x - level`` on the departure ``d = loc - level`` over held-out pixels is
``E[(s - level) d] / E[d^2]``, the share ``b`` of the departure that is real, measured without
ground truth and without the noise model (its noise only widens the slope's standard error).
:class:`DepartureVariance` fits it per cell of (brightness of the mean image) x (the departure
in the mean image's shot-noise units, :func:`~calmdown.calibration.deviation`) and adds the
variance ``(1 - b) d^2`` to the prior's: a departure that is real with probability ``b`` and
absent otherwise errs by ``d`` with probability ``1 - b``.

The prior's location is left as it is. Moved to ``level + b d`` (the least-squares prior), it
gained 0.11 dB and 5 % less wobble on a dense movie at 1 photon (same network), but the ROI
traces' dF/F error grew 3 %: the slopes are fitted pixel by pixel, and a ROI's sum keeps the
shrinkage of its pixels' real transients while their noise averages out; shrinking a 3 x 3
local mean and the rest apart did not help (dF/F error +7 %, dense 0.5 photons).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calmdown.calibration import DEVIATION_QUANTILES, LEVEL_QUANTILES, bin_index, deviation

__all__ = ["SLOPE_PRIOR_SD", "DepartureVariance", "fit_departure"]

SLOPE_PRIOR_SD = 0.5
"""Spread of a cell's slope about 1 (the network taken at its word) before the data: a cell's
own estimate is averaged with 1 by their precisions."""

MAX_SLOPE = 1.0
"""Largest slope kept: a departure the data confirm in full adds no variance."""

_SUBSAMPLE = 7
"""Every n-th fitted pixel sets the bin edges (quantiles need not see every pixel)."""


@dataclass
class DepartureVariance:
    """The variance of the prior's departure from the mean image that held-out frames doubt.

    Attributes
    ----------
    level_edges : list of float
        Interior edges of the mean image's brightness (photons).
    deviation_edges : list of float
        Interior edges of :func:`~calmdown.calibration.deviation`.
    slopes : list of list of float
        ``slopes[i][j]``, the share of the departure confirmed in brightness bin ``i`` and
        deviation bin ``j``; the variance added is ``(1 - slope) d^2``.
    """

    level_edges: list[float]
    deviation_edges: list[float]
    slopes: list[list[float]]

    @property
    def is_identity(self) -> bool:
        """Whether it changes nothing (every slope 1)."""
        return all(s == 1.0 for row in self.slopes for s in row)

    def apply(self, loc: torch.Tensor, level: torch.Tensor) -> torch.Tensor | None:
        """Return the variance the departure adds to the prior's (None: nothing).

        ``loc`` and ``level`` (the mean image the network was given, broadcastable) in photons.
        """
        if self.is_identity:
            return None
        level = torch.broadcast_to(level, loc.shape)
        i = bin_index(level, self.level_edges)
        j = bin_index(deviation(loc, level), self.deviation_edges)
        doubt = 1.0 - torch.as_tensor(self.slopes, dtype=loc.dtype, device=loc.device)
        d = loc - level
        return doubt.clamp_(min=0.0)[i, j].mul_(d).mul_(d)

    def to_dict(self) -> dict[str, Any]:
        """Plain types."""
        return {
            "level_edges": list(self.level_edges),
            "deviation_edges": list(self.deviation_edges),
            "slopes": [list(row) for row in self.slopes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepartureVariance:
        """Inverse of :meth:`to_dict`."""
        return cls(
            level_edges=[float(v) for v in data["level_edges"]],
            deviation_edges=[float(v) for v in data["deviation_edges"]],
            slopes=[[float(v) for v in row] for row in data["slopes"]],
        )

    @classmethod
    def identity(cls) -> DepartureVariance:
        """No added variance (models trained before the departure's variance existed)."""
        return cls(level_edges=[], deviation_edges=[], slopes=[[1.0]])


def fit_departure(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    level_quantiles: Sequence[float] = LEVEL_QUANTILES,
    deviation_quantiles: Sequence[float] = DEVIATION_QUANTILES,
) -> DepartureVariance:
    """Fit the slopes on held-out pixels.

    Parameters
    ----------
    parts : sequence of tuple
        ``(x, loc, level, target)`` per run of frames: observed values (T, Y, X), the
        network's prior location, the mean image it was given (broadcastable; without the
        frame's own value) and the boolean (T,) frames to fit on.
    level_quantiles, deviation_quantiles : sequence of float
        Quantiles of the fitted pixels that bound the bins.

    Returns
    -------
    DepartureVariance
        Identity where no pixel is given.
    """

    # Run by run (the runs together are the calibration's largest arrays): the bins' edges
    # from a subsample, then each cell's sums.
    def fitted(part: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, loc, level, t = part
        return x[t], loc[t], torch.broadcast_to(level, x.shape)[t]

    parts = [p for p in parts if bool(p[3].any())]
    if not parts:
        return DepartureVariance.identity()
    levels, devs = [], []
    for part in parts:
        _, loc, level = fitted(part)
        levels.append(level.flatten()[::_SUBSAMPLE].double().cpu())
        devs.append(deviation(loc, level).flatten()[::_SUBSAMPLE].double().cpu())
    level_edges, deviation_edges = (
        [float(v) for v in np.unique(np.quantile(torch.cat(values).numpy(), quantiles))]
        for values, quantiles in ((levels, level_quantiles), (devs, deviation_quantiles))
    )
    n_i, n_j = len(level_edges) + 1, len(deviation_edges) + 1
    # Per cell: sum d^2, sum y d, sum y^2 (y = x - level), count.
    sums = np.zeros((4, n_i * n_j))
    for part in parts:
        x, loc, level = fitted(part)
        cell = (
            bin_index(level, level_edges) * n_j + bin_index(deviation(loc, level), deviation_edges)
        ).flatten()
        d = (loc - level).flatten().double()
        y = (x - level).flatten().double()
        for k, w in enumerate((d * d, y * d, y * y, torch.ones_like(d))):
            sums[k] += torch.bincount(cell, weights=w, minlength=n_i * n_j).cpu().numpy()
    sdd, syd, syy, n = sums
    seen = (sdd > 0) & (n > 2)
    slope = np.where(seen, syd / np.where(seen, sdd, 1.0), 1.0)
    # The slope's standard error from the scatter about the fitted line.
    resid = np.clip(syy - 2 * slope * syd + slope**2 * sdd, 0.0, None) / np.maximum(n - 1, 1)
    precision = np.where(seen, sdd / np.maximum(resid, 1e-300), 0.0)
    prior = 1.0 / SLOPE_PRIOR_SD**2
    slopes = np.clip((slope * precision + prior) / (precision + prior), 0.0, MAX_SLOPE)
    return DepartureVariance(
        level_edges=level_edges,
        deviation_edges=deviation_edges,
        slopes=slopes.reshape(n_i, n_j).tolist(),
    )
