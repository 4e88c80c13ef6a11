"""Calibrating the prior's spread without ground truth, and checking it.

Detector noise is independent of the prior's error, so for any group of pixels chosen by what
the data show, ``E[(x - loc)^2] = E[prior error^2] + E[noise variance]``. On held-out frames
we therefore rescale the network's predicted prior variance per quantile bin of that variance:
the ranking the network learnt is kept, its level is corrected. The predictive distribution of
the raw value can then be checked on other held-out frames (interval coverage, PIT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from calmdown import fused

__all__ = [
    "ScaleCalibration",
    "StratifiedCalibration",
    "bin_index",
    "calibration_resolution",
    "fit_level_stage",
    "fit_scale_calibration",
    "fit_stratified_calibration",
    "isotonic",
    "predictive_check",
    "staged_part",
    "timing_variance",
]


def bin_index(x: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Index of the bin of each value between sorted interior ``edges`` (``torch.bucketize``).

    ``edges[i - 1] < x <= edges[i]`` gives ``i``. Counted as comparisons with each edge (a few
    of them): 2.3x faster than ``torch.bucketize`` on the CPU, which searches per element.
    """
    if not len(edges):
        return torch.zeros(x.shape, dtype=torch.long, device=x.device)
    if fused.enabled(x):
        return fused.bin_index(x, edges)
    count = x > float(edges[0])
    if len(edges) == 1:
        return count.long()
    out = count.to(torch.uint8)
    for e in edges[1:]:
        out += x > float(e)
    return out.long()


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
        if fused.enabled(prior_var):
            return fused.stages(prior_var, [("variance", [], self.edges, [self.factors])])
        factors = torch.as_tensor(self.factors, dtype=prior_var.dtype, device=prior_var.device)
        return prior_var * factors[bin_index(prior_var, self.edges)]

    def to_dict(self) -> dict[str, list[float]]:
        """Plain types."""
        return {"edges": list(self.edges), "factors": list(self.factors)}

    @classmethod
    def identity(cls) -> ScaleCalibration:
        """No change."""
        return cls(edges=[], factors=[1.0])


_SUM_BLOCK = 1 << 20
"""Values summed at a time by :func:`fit_scale_calibration`."""


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
    pv, r2, nv = (np.asarray(a).ravel() for a in (prior_var, resid2, noise_var))
    kv = None if known_var is None else np.asarray(known_var).ravel()
    qs = np.quantile(pv, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = np.unique(qs)
    # Per-bin sums a million values at a time, in float64: no float64 copy of every input.
    sums = np.zeros((3, len(edges) + 1))  # count, excess over noise, prior variance
    for a in range(0, pv.size, _SUM_BLOCK):
        part = slice(a, a + _SUM_BLOCK)
        p = pv[part].astype(np.float64)
        w = r2[part].astype(np.float64) - nv[part]
        if kv is not None:
            w -= kv[part]
        idx = np.searchsorted(edges, p, side="left")
        for k, weights in enumerate((None, w, p)):
            sums[k] += np.bincount(idx, weights=weights, minlength=len(edges) + 1)
    n_b = sums[0]
    safe = np.maximum(n_b, 1.0)
    excess, mean_pv = sums[1] / safe, sums[2] / safe
    # Each bin's excess is a small difference of large numbers at low light: pool adjacent
    # bins so that the calibrated variance never decreases as the predicted one grows.
    smooth = isotonic(excess, n_b)
    factors = [
        float(max(e / max(m, 1e-12), min_factor)) if n > 0 else 1.0
        for e, m, n in zip(smooth, mean_pv, n_b, strict=True)
    ]
    return ScaleCalibration(edges=[float(e) for e in edges], factors=factors)


ACTIVITY_EDGES = (1.0, 2.0, 3.0, 5.0, 8.0)
"""Bin edges of the activity ``|loc - mean image| / sd`` (model files of format 3)."""

CHANGE_EDGES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.5)
"""Bin edges of the change feature ``temporal_change(x) / sd`` of the final stage."""

DEVIATION_QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.97, 0.99)
"""Quantiles of the fitted pixels that bound the bins of the deviation feature."""

LEVEL_QUANTILES = (0.25, 0.5, 0.75, 0.9)
"""Quantiles of the mean image's brightness that bound the rows of a calibration stage. The
brightest tenth has a row of its own: in a sparse movie it is mostly cell pixels, whose prior
errs more than the background's (sparse movie at 1 photon: rows of thirds left the brightest
tenth covering 0.82 and the pixels below it 0.92-0.95)."""

CELL_PRIOR_SD = 0.5
"""Prior spread, relative to the factor it is shrunk toward, of one cell's factor in a stage
without an order (the deviation; toward its row's) and of a poorly determined row's (toward
the overall factor): its own estimate and that factor are weighted by their precisions."""

MULTIPLIER_MIN_Z = 3.0
"""Standard errors below which a shared multiplier's departure from 1 is dropped (see
:func:`_shared_multipliers`); pure noise passes it in 0.3 % of bins, and then barely."""

CHANGE_FRAMES = 3
"""Frames on each side that :func:`temporal_change` averages."""

TIMING_WEIGHT = 1.0
"""Weight of :func:`timing_variance` in the prior's variance of new models: 1 is a step
whose frame the context cannot place (see there)."""

CHANGE_PIXELS = 5
"""Side of the square spatial window :func:`temporal_change` averages over."""


def deviation(loc: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """How far the prior departs from the mean image, in shot-noise units of that image.

    ``|loc - level| / sqrt(level)`` (photons): free of the pixel's own value, like the prior.
    Unlike the prior's own spread, which the network learns poorly where noise dominates, the
    shot noise of the mean image is known, so the feature means the same in every recording.
    """
    return (loc - level).abs() / torch.sqrt(torch.clamp(level, min=1e-3))


def temporal_change(x: torch.Tensor) -> torch.Tensor:
    """How much the data change across a frame, without that frame's own values.

    ``|mean(B[t+1..t+3]) - mean(B[t-3..t-1])|`` where ``B`` is the 5 x 5 local mean of the
    (T, Y, X) values ``x``; windows are clipped at the movie's edges (zero where one side has
    no frame). Frame ``t`` itself is left out, so the feature holds none of its noise and
    residuals grouped by it measure the prior's error without selection bias. (The prior's own
    change ``|loc[t+1] - loc[t-1]|`` discriminates better but is not free of frame ``t``: the
    network sees it as context for both neighbours, and held-out noise variance then differs
    by 2-4 % between its bins, several times the prior's error variance.)
    """
    if fused.enabled(x):
        return fused.temporal_change(x, CHANGE_PIXELS, CHANGE_FRAMES)
    n = x.shape[0]
    box = torch.nn.functional.avg_pool2d(
        x[:, None], CHANGE_PIXELS, stride=1, padding=CHANGE_PIXELS // 2, count_include_pad=False
    )[:, 0]
    # Explicit shifted sums, not a running sum: each frame's value is then computed the same way
    # wherever the chunk of frames it sits in starts (results must not depend on chunking).
    before, after = torch.zeros_like(box), torch.zeros_like(box)
    n_before, n_after = torch.zeros(n, device=x.device), torch.zeros(n, device=x.device)
    for k in range(1, CHANGE_FRAMES + 1):
        if k >= n:
            break
        before[k:] += box[:-k]
        n_before[k:] += 1
        after[:-k] += box[k:]
        n_after[:-k] += 1
    both = ((n_before > 0) & (n_after > 0)).to(x.dtype)[:, None, None]
    before = before / torch.clamp(n_before, min=1).to(x.dtype)[:, None, None]
    after = after / torch.clamp(n_after, min=1).to(x.dtype)[:, None, None]
    return (after - before).abs() * both


def timing_variance(loc: torch.Tensor, frames: slice, weight: float) -> torch.Tensor:
    """Return the variance of not knowing when the prior's prediction changes, ``weight (d/2)^2``.

    ``d = loc[t+1] - loc[t-1]`` is how much the prior's own prediction changes across frame
    ``t`` (a (T, Y, X) tensor; the result covers ``frames``). The context network sees frames
    on both sides of ``t`` but never ``t`` itself, so where the clean signal steps up between
    ``t - 1`` and ``t + 1`` it cannot tell whether the step came before ``t`` or after, and
    predicts between; the truth is then ``d / 2`` away on either side. Weight 1 is that
    variance. The network's own spread, learnt from residuals that are mostly detector noise at
    a few photons, does not learn it (dense movie at 1 photon, 5000 steps: pixels of active
    cells covered 0.65-0.69 by 90 % intervals, those of rising transients 0.59), and held-out
    residuals cannot measure it there either (a factor per change bin known to +-100 %), so it
    enters as a structural term; the stages scale it with the rest of the variance, and so
    keep each group's level. Frames without both neighbours in ``loc`` (the movie's ends, a
    run's) get none.
    """
    f0, f1, _ = frames.indices(loc.shape[0])
    out = torch.zeros((f1 - f0, *loc.shape[1:]), dtype=loc.dtype, device=loc.device)
    a, b = max(f0, 1), min(f1, loc.shape[0] - 1)  # frames with both neighbours
    if b > a and weight > 0:
        d = loc[a + 1 : b + 1] - loc[a - 1 : b - 1]
        out[a - f0 : b - f0] = d.square_().mul_(weight / 4)
    return out


@dataclass
class StratifiedCalibration:
    """Factors on the final prior variance, by brightness and by one feature the data show.

    The network's spread, the propagated input noise, the guard and the correction each get
    the error variance right on average, but not within every group of pixels: the prior errs
    most where the signal changes fast (a transient's rise and fall), by a factor of 3-4 over
    the pixels where it is still, where it departs from the mean image (an active cell), and
    more in bright pixels than their variances say. A stage rescales the variance per cell of
    (brightness of the mean image) x (a feature: the change :func:`temporal_change` ``/
    sqrt(var)``, or the activity ``|loc - mean| / sqrt(var)``), both known without the pixel's
    own value, so held-out residuals measure each cell's error variance without selection bias.
    :class:`CalibrationStages` applies one stage per feature.

    Attributes
    ----------
    level_edges : list of float
        Interior edges of the mean image's brightness (photons).
    activity_edges : list of float
        Interior edges of the second feature.
    factors : list of list of float
        ``factors[i][j]`` for brightness bin ``i`` and feature bin ``j``.
    feature : str
        ``"change"``, ``"activity"`` (the only stage of model files of format 3) or
        ``"deviation"`` (:func:`deviation`).
    """

    level_edges: list[float]
    activity_edges: list[float]
    factors: list[list[float]]
    feature: str = "activity"

    def apply(
        self,
        var: torch.Tensor,
        loc: torch.Tensor,
        level: torch.Tensor,
        change: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Calibrated variance of a prior ``N(loc, var)`` at pixels of mean ``level``.

        ``change`` is :func:`temporal_change` of the observed values (needed when the
        feature is ``"change"``).
        """
        if not self.level_edges and not self.activity_edges:
            return var * float(self.factors[0][0])
        i, j = self._cells(var, loc, level, change)
        table = torch.as_tensor(self.factors, dtype=var.dtype, device=var.device)
        return var * table[i, j]

    def _cells(
        self,
        var: torch.Tensor,
        loc: torch.Tensor,
        level: torch.Tensor,
        change: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        level = torch.broadcast_to(level, var.shape)
        if self.feature == "change":
            if change is None:
                raise ValueError("this calibration stage needs the prior's temporal change")
            a = change / torch.sqrt(torch.clamp(var, min=1e-12))
        elif self.feature == "deviation":
            a = deviation(loc, level)
        else:
            a = (loc - level).abs() / torch.sqrt(torch.clamp(var, min=1e-12))
        return bin_index(level, self.level_edges), bin_index(a, self.activity_edges)

    def to_dict(self) -> dict[str, Any]:
        """Plain types."""
        return {
            "level_edges": list(self.level_edges),
            "activity_edges": list(self.activity_edges),
            "factors": [list(row) for row in self.factors],
            "feature": self.feature,
        }

    @classmethod
    def identity(cls) -> StratifiedCalibration:
        """No change."""
        return cls(level_edges=[], activity_edges=[], factors=[[1.0]])


@dataclass
class CalibrationStages:
    """Stratified calibration stages applied one after the other (each fitted on the last).

    Attributes
    ----------
    stages : list of StratifiedCalibration
        The stages, in order.
    timing : float
        Weight of :func:`timing_variance` in the prior's variance; 0 in models of format 9
        and earlier.
    timing_binned : bool
        Whether the stages bin pixels by a variance that holds the timing term (format 10)
        or by the rest of it (format 11 on); either way they scale the whole. The term reads
        the prior at frames ``t - 1`` and ``t + 1``, which the network predicted with frame
        ``t``'s value as context, so it carries that value's noise: bins by a variance that
        holds it group held-out pixels by their own noise (dense movie at 0.5 photons, 5000
        steps: the realised noise variance ran from 1.4 % below its expectation in the
        quartile of smallest stated variance to 3.4 % above in its top twentieth, against a
        prior error variance of 0.4 % of it), and factors read from such groups are biased
        where the term sets them. In the benchmark's movies it barely does (binning by the
        rest changed the stated variance by 0.02 % at most), but nothing bounds it.
    """

    stages: list[StratifiedCalibration]
    timing: float = 0.0
    timing_binned: bool = False

    def apply(
        self,
        var: torch.Tensor,
        loc: torch.Tensor,
        level: torch.Tensor,
        change: torch.Tensor | None = None,
        unbinned: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Calibrated variance (see :meth:`StratifiedCalibration.apply`).

        ``unbinned`` is variance the stages scale by the factors of the bins ``var`` falls
        in, but do not bin by (the timing term, see :attr:`timing_binned`).
        """
        given = [t for t in (var, loc, level, change) if t is not None]
        needs_change = any(s.feature == "change" for s in self.stages)
        if all(fused.enabled(t) for t in given) and (change is not None or not needs_change):
            steps = [(s.feature, s.level_edges, s.activity_edges, s.factors) for s in self.stages]
            out = fused.stages(var, steps, loc, level, change)
        else:
            out = var
            for stage in self.stages:
                out = stage.apply(out, loc, level, change)
        if unbinned is not None:
            out = out + _scaled_alike(unbinned, var, out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain types."""
        return {
            "stages": [stage.to_dict() for stage in self.stages],
            "timing": self.timing,
            "timing_binned": self.timing_binned,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationStages:
        """Inverse of :meth:`to_dict`; a single stage's dictionary (format 3) is one stage."""
        if "stages" in data:
            stages = [StratifiedCalibration(**d) for d in data["stages"]]
            # A format 10 file has a timing weight and bins by the variance that holds it.
            binned = bool(data.get("timing_binned", "timing" in data))
            return cls(stages, timing=float(data.get("timing", 0.0)), timing_binned=binned)
        return cls([StratifiedCalibration(**data)])

    @classmethod
    def identity(cls) -> CalibrationStages:
        """No change."""
        return cls([])


def _levels(parts: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Return the level (mean image) of every fitted pixel of ``parts``, flattened."""
    return torch.cat([torch.broadcast_to(p[4], p[0].shape)[p[5]].flatten() for p in parts])


def _level_edges(levels: torch.Tensor, quantiles: Sequence[float]) -> list[float]:
    """Interior brightness edges of the stages' rows: ``quantiles`` of the fitted pixels' level."""
    return [float(q) for q in np.unique(np.quantile(levels.double().cpu().numpy(), quantiles))]


def _relative_se(var: Any, nv2: Any) -> Any:
    """Return the relative standard error of a factor fitted on summed prior variance ``var``.

    ``nv2`` is the summed squared noise variance: each pixel's excess ``(x - loc)^2 - noise
    var`` has variance about ``2 noise var^2``, the noise dominating.
    """
    return np.sqrt(2 * nv2) / np.maximum(var, 1e-300)


def fit_stratified_calibration(
    parts: list[tuple[torch.Tensor, ...]],
    *,
    level_quantiles: Sequence[float] = LEVEL_QUANTILES,
    feature: str = "change",
    activity_edges: tuple[float, ...] | None = None,
    max_rel_se: float = 0.25,
    min_factor: float = 0.02,
) -> StratifiedCalibration:
    """Fit the per-cell variance factors on held-out frames.

    Parameters
    ----------
    parts : list of tuple
        ``(x, loc, var, raw_noise_var, level, target, change)`` per run of frames: observed
        values, the final prior, its variance, the noise variance of each raw value (unbiased),
        the mean image's brightness (broadcastable), the boolean (T,) frames to fit on and the
        :func:`temporal_change` of the observed values; optionally an eighth, variance the
        stage scales with ``var`` but does not bin by (the timing term, see
        :class:`CalibrationStages`).
    level_quantiles : sequence of float
        Quantiles of the brightness that bound its bins (:data:`LEVEL_QUANTILES`).
    feature : {"change", "activity"}
        The second feature (see :class:`StratifiedCalibration`).
    activity_edges : tuple of float, optional
        Interior bin edges of the second feature (default :data:`CHANGE_EDGES` or
        :data:`ACTIVITY_EDGES`).
    max_rel_se : float
        A brightness row whose factor would be known to worse than this relative standard
        error takes the overall factor (1 if that too is poor), clipped to within 2 standard
        errors of the row's own estimate: at low light the detector noise dominates the
        residuals, and a factor that is a small difference of large numbers is better left
        alone than fitted to noise, but not replaced by one its data rule out. Within a row,
        the factors are a precision-weighted non-decreasing fit in the activity.
    min_factor : float
        Smallest factor allowed.

    Returns
    -------
    StratifiedCalibration
    """
    level_edges = _level_edges(_levels(parts), level_quantiles)
    if activity_edges is None and feature == "deviation":
        values = torch.cat([deviation(p[1], p[4])[p[5]].flatten()[::7] for p in parts])
        qd = np.quantile(values.double().cpu().numpy(), DEVIATION_QUANTILES)
        activity_edges = tuple(float(q) for q in np.unique(qd))
    elif activity_edges is None:
        activity_edges = CHANGE_EDGES if feature == "change" else ACTIVITY_EDGES
    stage = StratifiedCalibration(
        level_edges=level_edges,
        activity_edges=[float(a) for a in activity_edges],
        factors=[[1.0]],
        feature=feature,
    )
    n_i, n_j = len(stage.level_edges) + 1, len(stage.activity_edges) + 1
    # Per cell: count, sum of excess (r^2 - noise var), sum of var, sum of squared noise var.
    sums = np.zeros((n_i, n_j, 4))
    for part in parts:
        x, loc, var, raw_nv, level, target, change = part[:7]
        i, j = stage._cells(var, loc, level, change)
        cell = (i * n_j + j)[target].flatten()
        r2 = ((x - loc) ** 2 - raw_nv)[target].flatten().double()
        v = _whole_variance(part)[target].flatten().double()
        nv2 = (raw_nv[target].flatten().double()) ** 2
        for k, w in enumerate((torch.ones_like(v), r2, v, nv2)):
            sums[..., k] += (
                torch.bincount(cell, weights=w, minlength=n_i * n_j).cpu().numpy().reshape(n_i, n_j)
            )

    def factor(s: np.ndarray) -> float | None:
        n, excess, var, nv2 = s
        if n < 1 or var <= 0:
            return None
        se = _relative_se(var, nv2)
        f = max(excess / var, min_factor)
        return float(f) if se <= max_rel_se * f else None

    overall = factor(sums.sum(axis=(0, 1)))
    fallback = 1.0 if overall is None else overall
    # A row whose total is poorly determined: its own estimate shrunk toward the overall
    # factor by their precisions (the overall factor's spread CELL_PRIOR_SD of itself; each
    # pixel's excess has variance about 2 noise var^2). The overall factor is set by the rows
    # with the most variance and can be several times a quiet row's; a row whose own estimate
    # is half lost in the noise keeps what its data say (taking the overall factor clipped to
    # 2 SE of its own estimate left the dim third of a dense movie at 1 photon covering
    # 0.93-0.95). Its cells need not be lost with it: where the prior errs several times more
    # than it says (a cell's edge, a transient), the excess stands out of the noise pooled
    # over such rows even when no row's total does (dense movie, 1 photon: the dimmest row's
    # top activity and deviation cells read 8.9 and 15.6 times the stated variance, to 37 %
    # and 25 %, and were given the row's factor). Such rows share multipliers by bin.
    row_factors = [factor(sums[i].sum(axis=0)) for i in range(n_i)]
    undetermined: dict[int, float] = {}
    for i, row_f in enumerate(row_factors):
        if row_f is None:
            n, excess, var, nv2 = sums[i].sum(axis=0)
            value = fallback
            if n >= 1 and var > 0:
                value = float(_shrunk(excess / var, var**2 / (2 * nv2), fallback))
            undetermined[i] = max(value, min_factor)
    cells: dict[int, np.ndarray] = {}
    if undetermined:
        rows = sorted(undetermined)
        shared = _shared_multipliers(sums[rows], np.array([undetermined[i] for i in rows]), feature)
        cells = dict(zip(rows, shared, strict=True))
    table = []
    for i, row_f in enumerate(row_factors):
        if row_f is None:
            table.append([float(max(f, min_factor)) for f in cells[i]])
            continue
        # Within a row the error grows with the feature (the prior errs most where the signal
        # changes, or departs from its mean): a non-decreasing fit, each cell weighted by its
        # precision, pools the cells whose own estimate is lost in the noise with their neighbours.
        n, excess, var, nv2 = (sums[i, :, k] for k in range(4))
        seen = (n > 0) & (var > 0)
        own = np.where(seen, excess / np.where(seen, var, 1.0), 0.0)
        weight = np.where(seen, var**2 / np.maximum(2 * nv2, 1e-300), 0.0)
        if feature == "deviation":
            # No order to impose (the error is largest near the mean image in bright pixels
            # and far from it in dim ones): each cell's estimate is shrunk toward its row's.
            fitted = _shrunk(own[seen], weight[seen], row_f)
        else:
            fitted = isotonic(own[seen], weight[seen])
        row = _fill_unseen(fitted, seen)
        table.append([float(max(f, min_factor)) for f in row])
    stage.factors = table
    return stage


def _whole_variance(part: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Return the variance a stage scales in a fit part: ``var`` and any unbinned variance."""
    return part[2] + part[7] if len(part) > 7 else part[2]


def _scaled_alike(unbinned: torch.Tensor, var: torch.Tensor, staged: torch.Tensor) -> torch.Tensor:
    """Return ``unbinned`` times each pixel's factor, the ratio of ``staged`` to ``var``."""
    return unbinned * (staged / torch.clamp(var, min=1e-30))


def staged_part(
    stage: StratifiedCalibration, part: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Return a fit part (see :func:`fit_stratified_calibration`) after ``stage``.

    Its variance and its unbinned variance both take each pixel's factor.
    """
    x, loc, var, raw_nv, level, target, change, *unbinned = part
    staged = stage.apply(var, loc, level, change)
    rest = tuple(_scaled_alike(u, var, staged) for u in unbinned)
    return (x, loc, staged, raw_nv, level, target, change, *rest)


def fit_level_stage(
    parts: list[tuple[torch.Tensor, ...]], *, min_factor: float = 0.02
) -> StratifiedCalibration:
    """One factor on the whole variance, so that its sum over the fitted pixels is their excess.

    The stages' cells are fitted by precision: isotonic fits and shrinkage toward a row's
    factor keep each cell's estimate where the noise leaves it unsure, and so need not keep
    the summed variance at the summed excess (dense movie at 10 photons, 5000 steps: 6 %
    below it after three stages). This last stage restores it, the factor shrunk toward 1
    by its precision (as a poorly determined row's is toward the overall factor) where the
    noise dwarfs the prior's error.

    Parameters
    ----------
    parts : list of tuple
        As :func:`fit_stratified_calibration`'s.
    min_factor : float
        Smallest factor allowed.

    Returns
    -------
    StratifiedCalibration
        A stage with no bins (feature ``"deviation"``, which needs nothing but the prior).
    """
    excess = var = nv2 = 0.0
    for part in parts:
        x, loc, _, raw_nv, _, target = part[:6]
        excess += float(((x - loc) ** 2 - raw_nv)[target].double().sum())
        var += float(_whole_variance(part)[target].double().sum())
        nv2 += float((raw_nv[target].double() ** 2).sum())
    factor = 1.0
    if var > 0:
        factor = float(_shrunk(excess / var, var**2 / max(2 * nv2, 1e-300), 1.0))
    return StratifiedCalibration(
        level_edges=[], activity_edges=[], factors=[[max(factor, min_factor)]], feature="deviation"
    )


def calibration_resolution(
    parts: list[tuple[torch.Tensor, ...]], *, level_quantiles: Sequence[float] = LEVEL_QUANTILES
) -> dict[str, Any]:
    """How precisely the held-out pixels measure a factor on the prior's variance.

    Each pixel's excess ``(x - loc)^2 - noise variance`` has variance about ``2 noise var^2``
    (the noise dominates), so a factor fitted over a group of pixels is known to within
    ``sqrt(2 sum noise var^2) / sum var`` of itself. Where the prior's error is a small share
    of the noise variance (a few photons per pixel), that is large: the intervals' widths
    then rest on the network's own spread more than on what the data can check.

    Parameters
    ----------
    parts : list of tuple
        As :func:`fit_stratified_calibration`'s: ``(x, loc, var, raw_noise_var, level,
        target, change[, unbinned])`` per run of frames.
    level_quantiles : sequence of float
        Quantiles of the brightness that bound the rows (:data:`LEVEL_QUANTILES`).

    Returns
    -------
    dict
        ``prior_error_share`` (the prior's variance over the noise variance, summed over the
        pixels), ``scale_se`` (relative standard error of one factor over all of them) and
        ``row_scale_se`` (the same per brightness row, dimmest first).
    """
    level = _levels(parts)
    var = torch.cat([_whole_variance(p)[p[5]].flatten() for p in parts]).double()
    nv = torch.cat([p[3][p[5]].flatten() for p in parts]).double()
    edges = _level_edges(level, level_quantiles)
    rows = bin_index(level, edges)
    n = len(edges) + 1
    sum_var = torch.bincount(rows, weights=var, minlength=n).cpu().numpy()
    sum_nv2 = torch.bincount(rows, weights=nv * nv, minlength=n).cpu().numpy()
    return {
        "prior_error_share": float(var.sum() / max(float(nv.sum()), 1e-300)),
        "scale_se": float(_relative_se(sum_var.sum(), sum_nv2.sum())),
        "row_scale_se": [float(v) for v in _relative_se(sum_var, sum_nv2)],
    }


def _shared_multipliers(sums: np.ndarray, values: np.ndarray, feature: str) -> np.ndarray:
    """Factors of the cells of the rows whose totals are poorly determined.

    ``sums`` holds those rows' per-cell (count, excess, variance, squared noise variance),
    shape (rows, bins, 4), and ``values`` their factors (of each row's total). The cells'
    factors are separable, ``r_i * m_j``: the rows share one multiplier per feature bin, and
    each row's ``r_i`` keeps its total at its value. The multipliers, ``sum excess / sum (r x
    variance)`` over the rows, are fitted non-decreasing in the feature (except the
    deviation's) by precision, and each fitted block's departure from 1 is kept in part
    ``max(0, 1 - (Z / z)^2)``, ``z`` its departure in standard errors and ``Z``
    :data:`MULTIPLIER_MIN_Z`: a multiplier the noise could have drawn stays 1, one far out of
    the noise stands. A few alternations fit both.
    """
    n_j = sums.shape[1]
    n = sums[..., 0].sum(axis=0)
    excess = sums[..., 1].sum(axis=0)
    var = sums[..., 2]
    nv2 = sums[..., 3].sum(axis=0)
    seen = (n > 0) & (var.sum(axis=0) > 0)
    r = values.astype(float)
    if not seen.any():
        return r[:, None] * np.ones(n_j)[None]
    row_var = var.sum(axis=1)
    for _ in range(3):
        base = (r[:, None] * var).sum(axis=0)
        own = excess[seen] / base[seen]
        weight = base[seen] ** 2 / np.maximum(2 * nv2[seen], 1e-300)
        if feature == "deviation":
            fitted, pooled = own, weight
        else:
            fitted, pooled = _isotonic_blocks(own, weight)
        z = (fitted - 1.0) * np.sqrt(pooled)
        kept = np.clip(1.0 - (MULTIPLIER_MIN_Z / np.maximum(np.abs(z), 1e-12)) ** 2, 0.0, None)
        mult = 1.0 + (fitted - 1.0) * kept
        if feature != "deviation":
            mult = np.maximum.accumulate(mult)
        m = _fill_unseen(mult, seen)
        # Each row's total stays at its value: r_i sum_j m_j var_ij = value_i sum_j var_ij.
        spread = (m[None] * var).sum(axis=1)
        r = np.where(spread > 0, values * row_var / np.maximum(spread, 1e-300), values)
    return r[:, None] * m[None]


def _isotonic_blocks(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`isotonic`'s fit and, per value, the summed weight of the block it was pooled in."""
    blocks = _pool_adjacent_violators(y, w)
    fitted = np.concatenate([np.full(c, v) for v, _, c in blocks])
    pooled = np.concatenate([np.full(c, wb) for _, wb, c in blocks])
    return fitted, pooled


def _fill_unseen(fitted: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Values of the bins ``seen`` (``fitted``, in order), and elsewhere the bin below's.

    A bin no held-out pixel fell in takes the factor of the bin below it (the first seen
    bin's where none is below).
    """
    out = np.full(len(seen), np.nan)
    out[seen] = fitted
    for j in range(len(out)):
        if np.isnan(out[j]):
            out[j] = out[j - 1] if j else fitted[0]
    return out


def _shrunk(own: Any, weight: Any, target: float) -> Any:
    """Estimates ``own`` of precision ``weight`` shrunk toward ``target``.

    The target's spread is :data:`CELL_PRIOR_SD` of itself; the two are averaged by their
    precisions.
    """
    prior_w = 1.0 / (CELL_PRIOR_SD * target) ** 2
    return (own * weight + target * prior_w) / (weight + prior_w)


def isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted non-decreasing least-squares fit (pool adjacent violators)."""
    return _isotonic_blocks(y, w)[0]


def _pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> list[list[float]]:
    """Blocks ``[value, summed weight, count]`` of the weighted non-decreasing fit of ``y``."""
    blocks: list[list[float]] = []
    for yi, wi in zip(y, w, strict=True):
        blocks.append([float(yi), float(max(wi, 1e-12)), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return blocks


def predictive_check(pit: np.ndarray, *, level: float = 0.9) -> dict[str, Any]:
    """Coverage of central predictive intervals of raw values, and PIT uniformity.

    Parameters
    ----------
    pit : ndarray
        The model's predictive CDF at held-out raw values (probability integral transform):
        uniform on [0, 1] if the predictive distribution is right.
    level : float
        Nominal coverage of the central interval.

    Returns
    -------
    dict
        ``coverage`` (fraction of raw values inside the central ``level`` interval),
        ``level``, ``pit_ks`` (Kolmogorov-Smirnov distance of the PIT from uniform; 0 is
        perfect) and ``pit_hist`` (fraction of values in each of 10 equal PIT bins; 0.1 each
        is perfect).
    """
    pit = np.asarray(pit, dtype=np.float64).ravel()
    ks = float(stats.kstest(pit, "uniform").statistic)
    hist = np.histogram(pit, bins=10, range=(0.0, 1.0))[0] / max(pit.size, 1)
    return {
        "coverage": float(np.mean(np.abs(pit - 0.5) <= level / 2)),
        "level": level,
        "pit_ks": ks,
        "pit_hist": [float(h) for h in hist],
    }
