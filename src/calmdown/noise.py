"""Poisson-Gaussian detector noise model, estimated from the movie itself.

A two-photon detector records ``x = offset + sum of PMT pulses + read noise``: the variance of a
pixel grows linearly with its mean, ``var = gain * (mean - offset) + read_noise**2`` (photon
transfer), where ``gain`` (ADU per detected photon) includes the PMT's excess noise. We measure
the variance on temporal differences of consecutive frames, which removes the static image and
most of the slow activity, and fit the line robustly over brightness bins.

Motion correction interpolates pixels, which correlates the noise of neighbours and shrinks the
variance each pixel shows. The sum of the noise covariance over all spatial lags is unchanged by
interpolation (its weights sum to one), so we measure the correlation of temporal differences
between neighbours and fit the photon-transfer line to that sum: the photon gain stays right, and
``variance_ratio`` records how much smaller the per-pixel variance is.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calmdown.errors import InputError
from calmdown.io.padding import checked

__all__ = ["CLIP_MARGIN_SD", "NoiseModel", "estimate_noise"]

logger = logging.getLogger(__name__)

_LAGS = tuple((dy, dx) for dy in range(0, 3) for dx in range(-2, 3) if (dy, dx) > (0, 0))


@dataclass(frozen=True)
class NoiseModel:
    """Poisson-Gaussian noise of one recording.

    Attributes
    ----------
    gain : float
        Photon-transfer gain, ADU per detected photon (PMT excess noise included).
    offset : float
        ADU of a pixel that receives no light.
    read_noise : float
        Standard deviation in ADU of the photon-independent noise.
    variance_ratio : float
        Per-pixel noise variance divided by what the photon count implies (1 for raw data,
        below 1 where registration interpolated neighbouring pixels).
    neighbour_correlation : tuple of float
        Correlation of the noise between a pixel and its neighbour along y and along x.
    photons_per_pixel : float
        Median over pixels of the mean detected photons per pixel per frame.
    source : str
        ``"estimated"``, ``"given"`` or ``"partly given"``.
    bin_means, bin_variances : list of float
        The photon-transfer points (mean, noise variance summed over lags) the fit used.
    clip_low, clip_high : float or None
        ADU at which the recording's values were clipped (a floor, a saturation ceiling),
        where values pile up there (see :func:`_clip_bounds`); None where they do not. A
        clipped value only says the signal was beyond the bound: it is no measurement of the
        noise (:meth:`measured`).
    """

    gain: float
    offset: float
    read_noise: float
    variance_ratio: float = 1.0
    neighbour_correlation: tuple[float, float] = (0.0, 0.0)
    photons_per_pixel: float = float("nan")
    source: str = "estimated"
    bin_means: list[float] = field(default_factory=list)
    bin_variances: list[float] = field(default_factory=list)
    clip_low: float | None = None
    clip_high: float | None = None

    @property
    def read_noise_photons(self) -> float:
        """Read noise in photon units."""
        return self.read_noise / self.gain

    def to_photons(self, adu: np.ndarray) -> np.ndarray:
        """Convert ADU to detected photons (float32)."""
        return ((np.asarray(adu, dtype=np.float32) - self.offset) / self.gain).astype(
            np.float32, copy=False
        )

    def to_adu(self, photons: np.ndarray) -> np.ndarray:
        """Convert detected photons to ADU (float32)."""
        return (np.asarray(photons, dtype=np.float32) * self.gain + self.offset).astype(
            np.float32, copy=False
        )

    def pixel_variance_photons(self, photons: Any) -> Any:
        """Noise variance of one pixel, in photon units squared, at a given clean level.

        ``photons``: an array or a tensor (negative levels count as 0).
        """
        rn2 = self.read_noise_photons**2
        return self.variance_ratio * (photons.clip(min=0.0) + rn2)

    def raw_variance_photons(self, photons: Any) -> Any:
        """Noise variance estimated from raw values themselves (photon units, array or tensor).

        Not clipped at zero: linear in the value, so its mean is the noise variance at the
        clean level whatever the values' own noise, which the variance at a predicted level
        is not (it inherits the prediction's bias).
        """
        return self.variance_ratio * (photons + self.read_noise_photons**2)

    @property
    def ceiling_photons(self) -> float | None:
        """The saturation ceiling in photon units (None where the recording has none)."""
        return None if self.clip_high is None else (self.clip_high - self.offset) / self.gain

    def measured(self, photons: Any, level: Any = None) -> Any:
        """Whether each value (photon units, array or tensor) lies strictly below the ceiling.

        Values at a ceiling the recording clipped to are not measurements of the
        Poisson-Gaussian noise the calibration's fits assume (training counts them by the
        probability of reaching the ceiling, :func:`calmdown.loss.marginal_nll`). With
        ``level`` (the expected clean value of each, photon units, e.g. the prior's
        location), values whose level lies within :data:`CLIP_MARGIN_SD` noise sd of the
        ceiling are left out too: their noise is cut off there, which shrinks its variance
        by more than the prior's error (cut at 2.3 sd by 6 %; at 4 sd by 0.05 %). See
        :func:`calmdown.pipeline._target_pixels`.

        A floor is not left out: at a few photons it cuts the tail of the read noise of every
        dim pixel (on the optinist recording, 0 ADU is 2.1 read-noise sd below the offset),
        and leaving its values out biases the fits about as much as keeping them, while a
        margin as for the ceiling would leave almost nothing to fit.
        """
        out = photons == photons  # True except NaN, for arrays and tensors alike
        edge = self.ceiling_photons
        if edge is not None:
            out = out & (photons < edge - 1e-6)
            if level is not None:
                sd = self.pixel_variance_photons(level) ** 0.5
                out = out & (edge - level > CLIP_MARGIN_SD * sd)
        return out

    @property
    def clips(self) -> bool:
        """Whether the recording's values were clipped at a ceiling (see :meth:`measured`)."""
        return self.clip_high is not None

    def to_dict(self) -> dict[str, object]:
        """Plain-type dictionary (for JSON and model files)."""
        out = asdict(self)
        out["neighbour_correlation"] = list(self.neighbour_correlation)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> NoiseModel:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["neighbour_correlation"] = tuple(values.get("neighbour_correlation", (0.0, 0.0)))
        return cls(**values)  # type: ignore[arg-type]

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"gain {self.gain:.3g} ADU/photon, offset {self.offset:.4g} ADU, read noise "
            f"{self.read_noise:.3g} ADU, {self.photons_per_pixel:.3g} photons/pixel/frame, "
            f"neighbour noise correlation y {self.neighbour_correlation[0]:.2f} "
            f"x {self.neighbour_correlation[1]:.2f} ({self.source})"
        )


def _frame_blocks(n_frames: int, max_frames: int, block: int = 64) -> list[tuple[int, int]]:
    """Contiguous blocks of frames spread evenly over the movie, at most ``max_frames`` in all."""
    if n_frames <= max_frames:
        return [(0, n_frames)]
    n_blocks = max(1, max_frames // block)
    starts = np.linspace(0, n_frames - block, n_blocks).astype(int)
    return [(int(s), int(s) + block) for s in starts]


_PIECE = 64
"""Frames read at once (a multiple of the accumulator's sub-blocks, which must not straddle
two reads): memory then does not grow with the frames measured."""


def _pieces(start: int, stop: int) -> list[tuple[int, int]]:
    """Cut frames ``start..stop`` at the multiples of :data:`_PIECE`.

    Examples
    --------
    >>> _pieces(60, 200)
    [(60, 64), (64, 128), (128, 192), (192, 200)]
    """
    cuts = [start, *range((start // _PIECE + 1) * _PIECE, stop, _PIECE), stop]
    return list(itertools.pairwise(cuts))


@dataclass
class _Accumulator:
    """Running sums over alternating sub-blocks of frames (parity 0 and parity 1).

    Pixels are binned by their mean over the frames of one parity and measured (mean,
    difference variance, neighbour covariance) on the frames of the other, so that the noise
    of the ranking is independent of the noise of what is measured: ranking and measuring on
    the same frames biases the slope, because the sample mean and sample variance of Poisson
    noise are correlated. Both ways round are used (cross-fitting), so every frame is measured.
    """

    shape: tuple[int, int]
    sub_block: int = 8
    n_frames: np.ndarray = field(init=False)
    n: np.ndarray = field(init=False)
    sum_frames: np.ndarray = field(init=False)
    sum_x: np.ndarray = field(init=False)
    sum_d2: np.ndarray = field(init=False)
    sum_cross: dict[tuple[int, int], np.ndarray] = field(init=False)
    peak: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        both = (2, *self.shape)
        self.peak = np.full(self.shape, -np.inf, np.float32)
        self.n_frames = np.zeros(2, np.int64)
        self.n = np.zeros(2, np.int64)
        self.sum_frames = np.zeros(both, np.float64)
        self.sum_x = np.zeros(both, np.float64)
        self.sum_d2 = np.zeros(both, np.float64)
        self.sum_cross = {lag: np.zeros(both, np.float64) for lag in _LAGS}

    def add(self, frames: np.ndarray, start: int) -> None:
        """Add consecutive frames that begin at frame ``start`` of the movie."""
        x_all = frames.astype(np.float64)
        np.maximum(self.peak, frames.max(axis=0), out=self.peak)
        sub = (start + np.arange(x_all.shape[0])) // self.sub_block
        for s in np.unique(sub):
            x = x_all[sub == s]
            p = int(s % 2)
            self.sum_frames[p] += x.sum(axis=0)
            self.n_frames[p] += x.shape[0]
            if x.shape[0] < 2:
                continue
            d = np.diff(x, axis=0)
            self.n[p] += d.shape[0]
            self.sum_x[p] += 0.5 * (x[1:] + x[:-1]).sum(axis=0)
            self.sum_d2[p] += (d * d).sum(axis=0)
            for (dy, dx), acc in self.sum_cross.items():
                acc[p] += (d * _shift(d, dy, dx)).sum(axis=0)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Return ``a[..., y + dy, x + dx]`` with zeros outside."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = a[..., ys, xs]
    return out


CLIP_MARGIN_SD = 4.0
"""Noise sd a value's level must keep from a clip bound for its value to count as measured."""

SATURATION_PILE_UP = 5.0
"""How many times more often the movie's largest value must occur than the next value below it
for it to read as a detector's ceiling (clipping) rather than the top of the noise."""


def _pile_up(values: np.ndarray, end: float) -> bool:
    """Whether the values pile up at ``end`` (their largest or smallest): a clipping bound.

    At least 20 of them sit there, :data:`SATURATION_PILE_UP` times as many as at the next
    value inward; the tail of a noise distribution thins out toward its end instead.
    """
    n_end = int(np.count_nonzero(values == end))
    inner = values[values != end]  # all on one side of ``end``
    if not inner.size:
        return False
    nearest = inner[np.argmin(np.abs(inner - end))]
    n_next = int(np.count_nonzero(inner == nearest))
    return n_end >= 20 and n_end >= SATURATION_PILE_UP * max(n_next, 1)


def _clip_bounds(
    values: np.ndarray, peak: np.ndarray, name: str | None
) -> tuple[np.ndarray, float | None, float | None]:
    """Return the pixels that reached a saturation ceiling, and the floor and ceiling found.

    ``values``: a sample of the movie's values; ``peak``: each pixel's largest value. A
    ceiling (floor) is a largest (smallest) value the values pile up at (:func:`_pile_up`).
    Clipped values vary less than the photon count says, so pixels that reach a ceiling bias
    the photon-transfer slope down (simulated dense movie, 4 photons: 1 % of the values
    clipped read the gain 5 % low, 5 % clipped 22 % low); they are left out of the fit. A
    warning names each bound found.
    """
    none = np.zeros(peak.shape, dtype=bool)
    if not values.size:
        return none, None, None
    low, high = float(values.min()), float(values.max())
    floor = low if low < high and _pile_up(values, low) else None
    ceiling = high if low < high and _pile_up(values, high) else None
    clipped = peak >= high if ceiling is not None else none
    for bound, what in ((ceiling, "a ceiling (saturation)"), (floor, "a floor")):
        if bound is None:
            continue
        share = np.count_nonzero(values == bound) / values.size
        where = f", in {clipped.mean():.1%} of the pixels" if bound == ceiling else ""
        said = (
            "training counts them as such, and they and the values whose noise it cuts off "
            "are left out of the noise model and the calibration; the denoiser still takes "
            "them as measured, so there the denoised values and intervals understate how far "
            "beyond it the signal went. Lower the PMT gain or laser power if you can."
            if bound == ceiling
            else "at a few photons it cuts the tail of the read noise, so the intervals of dim "
            "pixels rest on a noise model that does not hold there exactly. Record without "
            "clipping (keep the negative values) if you can."
        )
        warnings.warn(
            f"{name or 'movie'}: {share:.2%} of the values sit at {bound:g} ADU, {what}{where}: "
            f"a clipped value says only that the signal was beyond it; {said}",
            UserWarning,
            stacklevel=3,
        )
    return clipped, floor, ceiling


def _robust_mean(values: np.ndarray) -> float:
    """Mean of the values within 5 robust standard deviations of the median."""
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    if mad == 0:
        return float(np.mean(values))
    return float(np.mean(values[np.abs(values - med) <= 5 * mad]))


MAX_RESCUED_SE = 0.2
"""Largest relative standard error of a gain whose fit needed the weight floor
(:data:`_MIN_WEIGHT_VARIANCE`) at its dim end: beyond it the movie is refused and the gain
asked for. A scene of nearly uniform brightness whose blinking spots look like noise gave
15x the true gain at 24 %; each half of the optinist recording gives the whole one's gain
within 4 % at 10-12 %. (A fit that needs no floor is used, with a warning above 5 %.)"""

_MIN_WEIGHT_VARIANCE = 0.1
"""Smallest variance a bin is weighted by in the photon-transfer fit, as a fraction of the
variance it measured."""


def _weight_variance(line: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Variance each bin is weighted by: the line's, but not far below the bin's own.

    Where the bright bins curve upwards (active cells add their signal's variance), the
    line through them can fall below zero at the dim end, and a bin weighted by a variance
    near zero counts as noiseless: the fit then failed (the second half of the optinist
    recording). A tenth of what the bin measured never binds on a straight line.
    """
    return np.maximum(np.maximum(line, _MIN_WEIGHT_VARIANCE * np.abs(measured)), 1e-12)


def _binned_fit(
    rank: np.ndarray, means: np.ndarray, variances: np.ndarray, n_bins: int = 24
) -> tuple[float, float, float, np.ndarray, np.ndarray, bool]:
    """Fit ``variance = slope * mean + intercept`` over brightness bins.

    Pixels are sorted into ``n_bins`` equal-count bins by ``rank``; each bin contributes the
    robust means of ``means`` and ``variances``. Returns slope, intercept, the slope's relative
    standard error, the bin points, and whether a bin's weight needed the floor
    (:func:`_weight_variance`) on the way.
    """
    order = np.argsort(rank)
    # Drop the brightest 1 % (saturation, vessels) before binning.
    keep = max(int(0.99 * order.size), min(order.size, 2 * n_bins))
    order = order[:keep]
    groups = [g for g in np.array_split(order, n_bins) if g.size]
    bm = np.array([_robust_mean(means[g]) for g in groups])
    bv = np.array([_robust_mean(variances[g]) for g in groups])
    weights = np.array([g.size for g in groups], float)
    rescued = False
    # Iteratively reweighted least squares: the spread of a bin's mean variance grows with
    # the variance itself.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.RankWarning)  # rank deficient: no slope
            slope, intercept = np.polyfit(bm, bv, 1, w=np.sqrt(weights))
            cov = np.zeros((2, 2))
            for _ in range(3):
                line = slope * bm + intercept
                pred = _weight_variance(line, bv)
                rescued |= bool(np.any(pred > line))
                (slope, intercept), cov = np.polyfit(
                    bm, bv, 1, w=np.sqrt(weights) / pred, cov="unscaled"
                )
    except (np.linalg.LinAlgError, np.exceptions.RankWarning, ValueError):
        # Every bin at the same brightness (a nearly uniform scene): no slope to fit.
        return float("nan"), float(np.mean(bv)), float("inf"), bm, bv, rescued
    # Standard error from the scatter of the bins around the line.
    pred = slope * bm + intercept
    w = weights / _weight_variance(pred, bv) ** 2
    dof = max(len(bm) - 2, 1)
    chi2 = float(np.sum(w * (bv - pred) ** 2) / dof)
    rel_se = float(np.sqrt(max(cov[0, 0] * chi2, 0.0)) / abs(slope)) if slope else float("inf")
    return float(slope), float(intercept), rel_se, bm, bv, rescued


def estimate_noise(
    read_frames: Callable[[int, int], np.ndarray],
    n_frames: int,
    *,
    gain: float | None = None,
    offset: float | None = None,
    read_noise: float | None = None,
    max_frames: int = 2000,
    name: str | None = None,
) -> NoiseModel:
    """Estimate the Poisson-Gaussian noise model of a movie.

    Parameters
    ----------
    read_frames : callable
        ``read_frames(start, stop) -> ndarray (stop - start, Y, X)``, e.g. ``reader.read``.
    n_frames : int
        Number of frames in the movie.
    gain, offset, read_noise : float, optional
        Values to use instead of estimating them (ADU per photon, ADU, ADU).
    max_frames : int
        At most this many frames, in blocks spread over the movie, are read.
    name : str, optional
        The movie's name, for error messages.

    Returns
    -------
    NoiseModel

    Raises
    ------
    InputError
        If the movie has too few frames or no measurable noise (a constant movie), or frames
        padded at their edges (:mod:`calmdown.io.padding`).

    Notes
    -----
    The variance of a pixel's temporal difference ``x[t+1] - x[t]`` is twice the noise
    variance plus the (small) change of the clean signal between frames. Summing its
    covariance over spatial lags up to 2 pixels gives the variance the photon count implies
    even where registration interpolated the pixels. The line ``var = gain * mean + b`` is fit
    over 24 brightness bins by reweighted least squares on bin medians. The offset is where
    the line meets the read-noise variance, which is measured from the spread of values below
    the zero-photon level of dim pixels.

    References
    ----------
    .. [1] J. R. Janesick, "Photon Transfer", SPIE Press, 2007.
    .. [2] A. Foi et al., "Practical Poissonian-Gaussian noise modeling and fitting for
       single-image raw-data", IEEE TIP 17(10), 2008.
    """
    read_frames = checked(read_frames, name)  # motion correction's padding stops here
    if n_frames < 8:
        raise InputError(
            f"only {n_frames} frames: the noise model needs at least 8; "
            "pass a longer recording or give --gain, --offset and --read-noise",
            path=name,
        )
    blocks = _frame_blocks(n_frames, max_frames)
    acc: _Accumulator | None = None
    dim_samples: list[np.ndarray] = []
    for start, stop in blocks:
        stride = max(1, (stop - start) // 8)  # eight frames of each block sample the dim values
        for a, b in _pieces(start, stop):
            frames = np.asarray(read_frames(a, b), dtype=np.float32)
            if not np.all(np.isfinite(frames)):
                raise InputError(
                    "the movie contains NaN or infinite values; replace them (e.g. with the "
                    "neighbouring frames' values) before denoising",
                    path=name,
                )
            if acc is None:
                acc = _Accumulator(frames.shape[1:])
            acc.add(frames, a)
            dim_samples.append(frames[(np.arange(a, b) - start) % stride == 0].reshape(-1))
    assert acc is not None
    n_all = max(int(acc.n.sum()), 1)
    mean = acc.sum_x.sum(axis=0) / n_all
    var_pix = acc.sum_d2.sum(axis=0) / (2 * n_all)
    if not np.any(var_pix > 0):
        raise InputError(
            "the movie does not change over time (constant frames): there is no noise to "
            "model and nothing to denoise; check that this is the recording you meant",
            path=name,
        )
    # Correlation of temporal differences with neighbours (interior pixels only).
    h, w = mean.shape
    inner = (slice(2, max(h - 2, 3)), slice(2, max(w - 2, 3)))
    cov_sum = var_pix.copy()
    corr: dict[tuple[int, int], float] = {}
    for lag, cross in acc.sum_cross.items():
        c = cross.sum(axis=0) / (2 * n_all)
        cov_sum += 2 * c  # lag and its mirror image
        corr[lag] = float(np.mean(c[inner]) / max(np.mean(var_pix[inner]), 1e-12))
    rho_y, rho_x = corr[(1, 0)], corr[(0, 1)]
    summed_ratio = float(np.mean(cov_sum[inner]) / max(np.mean(var_pix[inner]), 1e-12))
    # Use the summed covariance only where the noise is measurably correlated: otherwise it
    # only adds the variance of 24 extra terms to the fit.
    correlated = max(abs(rho_y), abs(rho_x)) > 0.05
    variance_ratio = 1.0 / summed_ratio if correlated and summed_ratio > 1.0 else 1.0
    values = np.concatenate(dim_samples)
    clipped, clip_low, clip_high = _clip_bounds(values, acc.peak, name)
    # Cross-fitting: measure on the frames of one parity, rank by the mean of the other.
    pairs = [(p, 1 - p) for p in (0, 1) if acc.n[p] > 0 and acc.n_frames[1 - p] > 0]
    if not pairs:  # a movie shorter than two sub-blocks: rank on the measured frames
        pairs = [(p, p) for p in (0, 1) if acc.n[p] > 0]
    ranks, means, fit_vars = [], [], []
    for measured, ranked in pairs:
        n_p = int(acc.n[measured])
        var_p = acc.sum_d2[measured] / (2 * n_p)
        if correlated:
            fit_p = var_p + sum(c[measured] for c in acc.sum_cross.values()) / n_p
        else:
            # Frame-to-frame changes of the signal add to the difference variance, more in
            # brighter pixels, and bias the photon-transfer slope up (by 0.7 % at 2 and 1.3 %
            # at 10 photons per pixel in simulated dense tissue, 0.1-0.4 % with this
            # correction). They are smooth over one pixel and the noise is not: subtract the
            # difference covariance with the four nearest neighbours.
            down, right = acc.sum_cross[(1, 0)][measured], acc.sum_cross[(0, 1)][measured]
            near = (down + _shift(down, -1, 0) + right + _shift(right, 0, -1)) / (4 * 2 * n_p)
            fit_p = var_p - near
        fit = ~clipped[inner]
        ranks.append((acc.sum_frames[ranked] / acc.n_frames[ranked])[inner][fit])
        means.append((acc.sum_x[measured] / n_p)[inner][fit])
        fit_vars.append(fit_p[inner][fit])
    slope, intercept, rel_se, bm, bv, rescued = _binned_fit(
        np.concatenate(ranks), np.concatenate(means), np.concatenate(fit_vars)
    )
    source = "estimated"
    given = [v is not None for v in (gain, offset, read_noise)]
    if all(given):
        source = "given"
    elif any(given):
        source = "partly given"
    est_gain = slope if gain is None else float(gain)
    if not np.isfinite(est_gain) or (gain is None and rescued and rel_se > MAX_RESCUED_SE):
        se = "" if not np.isfinite(est_gain) else f" (relative standard error {rel_se:.0%})"
        raise InputError(
            f"could not measure the photon-transfer gain{se}: nearly every pixel has the same "
            "brightness, or activity swamps the noise, so the noise variance cannot be seen to "
            "grow with brightness; give the detector's gain with --gain (ADU per photon)",
            path=name,
        )
    if gain is None and np.isfinite(slope) and rel_se > 0.05:
        warnings.warn(
            f"{name or 'movie'}: the photon-transfer gain is poorly determined (relative standard "
            f"error {rel_se:.0%}): the movie's brightness range is too narrow. Give the "
            "detector's gain (--gain, ADU per photon) if it is known.",
            UserWarning,
            stacklevel=2,
        )

    if est_gain <= 0:
        raise InputError(
            "could not measure a positive photon-transfer gain (noise variance does not grow "
            "with brightness); give it with --gain (ADU per photon)",
            path=name,
        )
    if gain is not None:
        # Refit the intercept with the slope fixed.
        intercept = float(np.median(bv - est_gain * bm))
    est_offset, est_read = _offset_and_read_noise(
        values, mean, est_gain, intercept, offset=offset, read_noise=read_noise
    )
    photons = float(np.median((mean - est_offset) / est_gain))
    model = NoiseModel(
        gain=float(est_gain),
        offset=float(est_offset),
        read_noise=float(est_read),
        variance_ratio=float(variance_ratio),
        neighbour_correlation=(rho_y, rho_x),
        photons_per_pixel=photons,
        source=source,
        bin_means=[float(v) for v in bm],
        bin_variances=[float(v) for v in bv],
        clip_low=clip_low,
        clip_high=clip_high,
    )
    logger.info("noise model: %s", model.summary())
    return model


def _quantum(values: np.ndarray) -> float:
    """Return the spacing of the values' levels (1 for integer ADU; 0 for continuous values).

    The floor of the read noise is a share of it: in the movie's own units, not in ADU (a movie
    divided by 1000 read an offset of 1768 and a read noise of 144 in units of the original,
    true 100 and 1.9, with a floor of one ADU).
    """
    levels = np.unique(values[:: max(1, values.size // 200_000)])
    steps = np.diff(levels)
    return float(steps.min()) if steps.size else 0.0


def _offset_and_read_noise(
    values: np.ndarray,
    mean: np.ndarray,
    gain: float,
    intercept: float,
    *,
    offset: float | None,
    read_noise: float | None,
) -> tuple[float, float]:
    """Split the fitted intercept ``read_noise**2 - gain * offset`` into its two parts.

    Values below the zero-photon level can only come from read noise, so their spread below the
    offset measures it; the offset then follows from the intercept. Two fixed-point rounds.
    """
    if offset is not None and read_noise is not None:
        return float(offset), float(read_noise)
    if offset is not None:
        rn2 = intercept + gain * float(offset)
        return float(offset), float(np.sqrt(max(rn2, 0.0))) if read_noise is None else read_noise
    rn = 0.0 if read_noise is None else float(read_noise)
    off = (rn**2 - intercept) / gain
    # Only values of dim pixels carry a zero-photon peak.
    dim_level = np.quantile(mean, 0.25)
    floor = 0.5 * _quantum(values) / np.sqrt(12.0)  # quantisation alone
    for _ in range(3):
        if read_noise is None:
            below = values[(values < off) & (values > off - 10 * max(rn, 1.0 * gain))]
            if below.size >= 200 and dim_level < off + 5 * gain:
                rn = float(np.sqrt(np.mean((below - off) ** 2)))
            else:
                rn = float(np.sqrt(max(intercept + gain * off, 0.0)))
            rn = max(rn, floor)
        off = (rn**2 - intercept) / gain
    return float(off), float(rn)
