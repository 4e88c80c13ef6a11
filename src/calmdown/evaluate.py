"""Quality on the user's own recording, without ground truth: the photon-split estimate.

Each frame's photon counts are split at random into two halves A and B whose noise is
independent. The denoiser is trained on and applied to half A alone, and its output ``dA`` is
scored against half B. Both halves see the same clean signal (half of the recording's), and
the noise of B is independent of everything the denoiser saw, so

``E[(dA - B)^2] = E[(dA - clean/2)^2] + Var(noise of B)``

and the denoiser's mean squared error against the truth follows by subtracting the noise
variance of B. The raw half A's own error is its noise variance, which by symmetry equals B's;
their ratio is the PSNR gain. One thing a split does not halve like a recording with half the
photons would: the split halves the read noise too, so A is given the missing half as
independent Gaussian noise before it is denoised, and its raw error counts it.

How to split
------------
``noise.to_photons`` divides by the photon-transfer gain ``G = d var / d mean``. A PMT's pulse
heights vary, so ``G = g * ENF`` (mean pulse height times the excess noise factor) and the
converted values are not photons but counts in units of ``G``: mean ``m = photons / ENF`` and
variance ``m`` (plus read noise), i.e. Poisson-like in their first two moments but continuous.
A binomial split of a count ``n`` with ``Var(n) = v`` and mean ``E|n| = m`` gives halves with

``Var(A) = Var(B) = (v + m) / 4`` and ``Cov(A, B) = (v - m) / 4``,

independent only when ``v = m`` (Poisson). Splitting true photons (units of ``g``) would give
``v = ENF * m`` and ``Cov = (ENF - 1) m / 4``; in units of ``G`` the over-dispersion is gone.
What is left is that ``y`` is not an integer and carries read noise. We thin the rounded count
``n = rint(y)`` binomially and give each half half of the rounding residual ``y - n``:
``A = y/2 + eps``, ``B = y/2 - eps`` with ``eps = Bin(n, 1/2) - n/2``, so that ``A + B = y``
and no rounding noise is added. Then ``Cov(A, B) = (v - E|n|) / 4`` with ``v`` the noise
variance of ``y``: a small excess (the read noise, ``rn^2 / 4``, and any mismatch of the
gain), shared by both halves as if it were one Gaussian added to both. We measure that
excess from the data (second temporal differences of ``y``, less their products with
neighbouring pixels, which hold only signal; binned by a local level that excludes the
frames compared) and add an anti-correlated Gaussian ``+z`` to A and ``-z`` to B with
``Var(z) = (v - E|n|) / 4``, which cancels the covariance: ``Cov(A, B) = 0`` and
``Var(A) = Var(B) = v / 2``. Most of each half's noise variance (``|n| / 4``) comes from our
own binomial draw and is known exactly; only the small excess needs to be measured, and it
must be: at a 16 dB gain the denoiser's error is 1/40 of the noise variance, so an error of
1 % of the noise variance in the subtraction moves the estimate by about 1.7 dB.

Interpolated recordings (motion-corrected, or low-pass filtered along the scan line) have
noise that is correlated between neighbouring pixels: the photons of one pixel of the
detector were spread over several pixels of the movie. Splitting each pixel's value
independently then leaves ``Cov(A_p, B_q) = Cov(n_p, n_q) / 4`` between neighbours ``p, q``,
which a denoiser that looks at neighbours of A exploits, and the estimate becomes optimistic.
A binomial split is not valid there. For such movies (``variance_ratio < 0.95`` or a neighbour
correlation above 0.05) the split is Gaussian instead: ``A = y/2 + z``, ``B = y/2 - z`` with
``z`` coloured to a quarter of the measured noise covariance (every lag up to 2 pixels), which
makes the halves uncorrelated at every lag. At low counts the noise is far from Gaussian, so
the halves are uncorrelated but not fully independent: treat that estimate as approximate.

References
----------
.. [1] J. Batson and L. Royer, "Noise2Self: blind denoising by self-supervision", ICML 2019.
.. [2] T. Pang et al., "Recorrupted-to-Recorrupted: unsupervised deep learning for image
   denoising", CVPR 2021.
.. [3] J. Janesick, "Photon Transfer", SPIE Press, 2007.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from calmdown.config import Config, make_config
from calmdown.errors import InputError
from calmdown.noise import NoiseModel, estimate_noise
from calmdown.train import TrainProgress

__all__ = [
    "EvaluateResult",
    "SplitHalves",
    "estimate_gain",
    "photon_split",
    "score_halves",
    "split_halves",
    "split_method",
]

logger = logging.getLogger(__name__)

SplitMethod = Literal["auto", "binomial", "gaussian"]

_LEVEL_FRAMES = 4  # frames on each side of a pair in the local level
_N_BINS = 16
_MAX_LAG = 2


# -- the split -------------------------------------------------------------------------------


def split_method(noise: NoiseModel) -> Literal["binomial", "gaussian"]:
    """Which split suits a movie: binomial unless its noise is correlated between neighbours.

    Parameters
    ----------
    noise : NoiseModel
        The movie's noise model.

    Returns
    -------
    str
        ``"binomial"`` for raw detector data, ``"gaussian"`` where registration or filtering
        correlated the noise of neighbouring pixels (a binomial split is not valid there).
    """
    correlated = noise.variance_ratio < 0.95 or max(map(abs, noise.neighbour_correlation)) > 0.05
    return "gaussian" if correlated else "binomial"


def _local_level(x: np.ndarray, frames: int = _LEVEL_FRAMES) -> np.ndarray:
    """Local mean at frame t from ``frames`` frames on each side, leaving out t-1, t and t+1.

    The mean is over 3 x 3 pixels and frames t-frames-1..t-2 and t+2..t+frames+1, so it is
    independent of the noise of frames t-1, t and t+1 (detector noise is independent between
    frames): a pixel-frame's level says nothing about its own noise.
    """
    x64 = x.astype(np.float64)
    spatial = ndimage.uniform_filter(x64, size=(1, 3, 3), mode="nearest")
    n_t = x.shape[0]
    csum = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(spatial, axis=0)])
    t = np.arange(n_t)
    lo = np.clip(t - frames - 1, 0, n_t)
    hi = np.clip(t + frames + 2, 0, n_t)
    near_lo = np.clip(t - 1, 0, n_t)
    near_hi = np.clip(t + 2, 0, n_t)
    total = (csum[hi] - csum[lo]) - (csum[near_hi] - csum[near_lo])
    count = ((hi - lo) - (near_hi - near_lo))[:, None, None]
    return (total / np.maximum(count, 1)).astype(np.float32)


def _neighbour_product(e: np.ndarray) -> np.ndarray:
    """Mean of ``e`` times each of its 4 neighbours in the same frame (edges: those present)."""
    total = np.zeros_like(e)
    count = np.zeros(e.shape[1:])
    for axis in (1, 2):
        lead = [slice(None)] * 3
        lag = [slice(None)] * 3
        lead[axis], lag[axis] = slice(1, None), slice(None, -1)
        prod = e[tuple(lead)] * e[tuple(lag)]
        total[tuple(lead)] += prod
        total[tuple(lag)] += prod
        c_lead = [slice(None)] * 2
        c_lag = [slice(None)] * 2
        c_lead[axis - 1], c_lag[axis - 1] = slice(1, None), slice(None, -1)
        count[tuple(c_lead)] += 1
        count[tuple(c_lag)] += 1
    return total / np.maximum(count, 1)


def _noise_stats_by_level(
    x: np.ndarray,
    level: np.ndarray,
    *,
    uncorrelated: bool,
    absval: np.ndarray | None = None,
    n_bins: int = _N_BINS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise variance and mean absolute value of ``x`` in bins of the local level.

    The noise variance comes from the second temporal difference
    ``e[t] = x[t] - (x[t-1] + x[t+1]) / 2``, whose variance is 1.5 times the noise variance
    plus a little of the signal's curvature in time (a first difference would add three times
    more of the signal's change). Where the noise is independent between pixels
    (``uncorrelated``), the mean product of ``e`` with its 4 neighbours holds only signal, and
    subtracting it removes most of the rest: on the simulator the signal left is 0.02 % of the
    noise variance, against 0.2-0.4 % for first differences. Returns bin levels, noise
    variances and the mean of ``absval`` (default ``|x|``), weighted like the variance:
    ``(absval[t] + (absval[t-1] + absval[t+1]) / 4) / 1.5``.
    """
    x64 = x.astype(np.float64)
    e = x64[1:-1] - 0.5 * (x64[:-2] + x64[2:])
    sq = e * e
    if uncorrelated:
        sq = sq - _neighbour_product(e)
    sq = (sq / 1.5).ravel()
    absx = np.abs(x64) if absval is None else np.asarray(absval, dtype=np.float64)
    mean_abs = ((absx[1:-1] + 0.25 * (absx[:-2] + absx[2:])) / 1.5).ravel()
    lev = level[1:-1].astype(np.float64).ravel()
    edges = np.unique(np.quantile(lev, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, lev, side="right") - 1, 0, max(len(edges) - 2, 0))
    count = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    ok = count > 0
    centre = np.bincount(idx, lev)[ok] / count[ok]
    var = np.bincount(idx, sq)[ok] / count[ok]
    mabs = np.bincount(idx, mean_abs)[ok] / count[ok]
    return centre, var, mabs


def _noise_correlation(y: np.ndarray, max_lag: int = _MAX_LAG) -> np.ndarray:
    """Correlation of the noise between pixels at lags up to ``max_lag``, from frame differences.

    Returns a symmetric ``(2 max_lag + 1, 2 max_lag + 1)`` array with 1 at the centre.
    """
    step = max(1, y.shape[0] // 512)
    d = np.diff(y[::step].astype(np.float64), axis=0)
    h, w = d.shape[1:]
    m = max_lag
    core = d[:, m : h - m, m : w - m]
    var = float(np.mean(core * core))
    corr = np.zeros((2 * m + 1, 2 * m + 1))
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            shifted = d[:, m + dy : h - m + dy, m + dx : w - m + dx]
            corr[dy + m, dx + m] = float(np.mean(core * shifted)) / max(var, 1e-12)
    return 0.5 * (corr + corr[::-1, ::-1])


def _colouring_kernel(corr: np.ndarray, size: int = 32) -> np.ndarray:
    """Return a kernel whose autocorrelation is ``corr`` (spectral square root, unit energy)."""
    m = corr.shape[0] // 2
    grid = np.zeros((size, size))
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            grid[dy % size, dx % size] = corr[dy + m, dx + m]
    spectrum = np.maximum(np.fft.fft2(grid).real, 0.0)
    kernel = np.fft.fftshift(np.fft.ifft2(np.sqrt(spectrum)).real)
    c = size // 2
    r = 2 * m + 1
    kernel = kernel[c - r : c + r + 1, c - r : c + r + 1]
    return kernel / np.sqrt(np.sum(kernel**2))


def photon_split(
    photons: np.ndarray,
    noise: NoiseModel,
    rng: np.random.Generator,
    *,
    method: SplitMethod = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Split a movie's counts into two halves with independent noise and half the signal each.

    Parameters
    ----------
    photons : numpy.ndarray
        ``(T, Y, X)`` movie in the noise model's photon units (``noise.to_photons(raw)``),
        at least 4 frames.
    noise : NoiseModel
        The movie's noise model; it picks the method when ``method="auto"``.
    rng : numpy.random.Generator
        Source of the random split.
    method : {"auto", "binomial", "gaussian"}
        ``binomial``: thin the rounded count binomially with p = 1/2, give each half half
        of the rounding residual, and cancel the measured excess dispersion (read noise,
        any PMT gain spread not absorbed by the gain) with an anti-correlated Gaussian.
        ``gaussian``: ``y/2 +- z`` with ``z`` coloured to a quarter of the measured noise
        covariance, for movies whose noise is correlated between pixels.
        ``auto``: :func:`split_method`.

    Returns
    -------
    a, b : numpy.ndarray
        float32 halves of the same shape, ``a + b = photons``. Their noise is uncorrelated
        (at every spatial lag for the Gaussian split) and each has the same variance, half
        that of the input.

    Raises
    ------
    InputError
        For a movie that is not (T, Y, X) with T >= 4, or an unknown method.

    Notes
    -----
    With ``n = rint(y)``, ``A = y/2 + eps``, ``B = y/2 - eps`` where ``eps`` is the binomial
    deviation ``Bin(n, 1/2) - n/2`` (variance ``|n| / 4``), so for noise variance ``v`` of
    ``y`` and ``m = E|n|``, ``Cov(A, B) = (v - m) / 4``. The excess ``v - m`` is measured in
    16 bins of a local level (3 x 3 pixels, 8 frames, leaving out frames t-1..t+1) from
    second temporal differences, less their products with the 4 neighbouring pixels
    (signal only, when the noise is independent between pixels), and ``+z`` / ``-z`` with
    ``Var(z) = max(v - m, 0) / 4`` are added. See the module docstring for the derivation.

    Examples
    --------
    >>> import numpy as np
    >>> from calmdown.noise import NoiseModel
    >>> rng = np.random.default_rng(0)
    >>> counts = rng.poisson(4.0, (50, 16, 16)).astype(np.float32)
    >>> a, b = photon_split(counts, NoiseModel(1.0, 0.0, 0.0), rng)
    >>> bool(np.allclose(a + b, counts)), round(float(a.mean()), 1)
    (True, 2.0)
    """
    a, b, _ = _split(photons, noise, rng, method=method)
    return a, b


def _split(
    photons: np.ndarray,
    noise: NoiseModel,
    rng: np.random.Generator,
    *,
    method: SplitMethod = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`photon_split`, also returning ``E[(a - b)^2 | input]`` (float32), per element.

    That conditional expectation is twice the noise variance of one half; using it instead of
    the drawn ``(a - b)^2`` removes the split's own sampling noise from the estimate.
    """
    y = np.asarray(photons)
    if y.ndim != 3 or y.shape[0] < 4:
        raise InputError(f"photon_split needs a (T, Y, X) movie with T >= 4; got shape {y.shape}")
    chosen = split_method(noise) if method == "auto" else method
    if chosen not in ("binomial", "gaussian"):
        raise InputError(f"unknown split method {method!r}; use 'auto', 'binomial' or 'gaussian'")
    if chosen == "binomial":
        y64 = y.astype(np.float64)
        n = np.rint(y64)
        level = _local_level(y64)
        centre, var, mean_abs = _noise_stats_by_level(
            y64, level, uncorrelated=True, absval=np.abs(n)
        )
        excess = np.interp(level, centre, var - mean_abs)
        s2 = np.maximum(excess, 0.0) / 4.0
        # a = y/2 + eps + z, b = y/2 - eps - z: the binomial deviation eps of the rounded count
        # (variance |n|/4) carries most of the split; the rounding residual y - n goes half to
        # each side, so no rounding noise is added and a + b = y.
        eps = np.sign(n) * rng.binomial(np.abs(n).astype(np.int64), 0.5) - 0.5 * n
        eps += rng.standard_normal(y.shape) * np.sqrt(s2)
        a = (0.5 * y64 + eps).astype(np.float32)
        b = (0.5 * y64 - eps).astype(np.float32)
        return a, b, (np.abs(n) + 4.0 * s2).astype(np.float32)
    y64 = y.astype(np.float64)
    level = _local_level(y64)
    centre, var, _ = _noise_stats_by_level(y64, level, uncorrelated=False)
    v = np.maximum(np.interp(level, centre, var), 0.0)
    kernel = _colouring_kernel(_noise_correlation(y64))
    white = rng.standard_normal(y.shape)
    coloured = ndimage.convolve(white, kernel[None], mode="wrap")
    z = coloured * np.sqrt(v / 4.0)
    a = (0.5 * y64 + z).astype(np.float32)
    b = (0.5 * y64 - z).astype(np.float32)
    return a, b, v.astype(np.float32)


# -- the estimate ----------------------------------------------------------------------------


@dataclass
class EvaluateResult:
    """Ground-truth-free estimate of a denoiser's PSNR gain on a recording.

    Attributes
    ----------
    psnr_gain_db : float
        Estimated PSNR gain (dB) of the denoised half over the raw half, both against the
        clean half-signal: ``10 log10(mse_raw / mse_denoised)``.
    psnr_gain_db_sd : float
        Its standard deviation from a block bootstrap over runs of frames (sampling of
        frames and noise only; retraining with another seed varies it too).
    mse_raw : float
        Mean noise variance of the raw half A (photon units squared), with the read noise
        a recording of half the photons has: the raw half's error.
    mse_denoised : float
        Estimated mean squared error of the denoised half against the clean half-signal.
    mse_denoised_sd : float
        Bootstrap standard deviation of ``mse_denoised``.
    method : str
        The split used, ``binomial`` or ``gaussian``.
    split_valid : bool
        False where the split cannot make the halves independent (noise correlated between
        pixels): the estimate is then approximate.
    photons_per_pixel : float
        Median photons per pixel per frame of the recording (noise model units).
    photons_per_pixel_half : float
        The same for each half: the gain is measured at this level.
    halves_correlation : float
        Measured correlation of the two halves' frame-to-frame changes at the same pixel
        (should be about 0; signal changes push it slightly above).
    halves_neighbour_correlation : float
        The same between a pixel of A and its neighbours of B along y and x (mean).
    n_frames : int
        Frames scored.
    block_frames : int
        Frames per bootstrap block.
    noise_model : dict
        The recording's noise model.
    training : dict
        What training on half A did (empty for a custom denoiser).
    notes : list of str
        What the number means and its caveats, one sentence each.
    """

    psnr_gain_db: float
    psnr_gain_db_sd: float
    mse_raw: float
    mse_denoised: float
    mse_denoised_sd: float
    method: str
    split_valid: bool
    photons_per_pixel: float
    photons_per_pixel_half: float
    halves_correlation: float
    halves_neighbour_correlation: float
    n_frames: int
    block_frames: int
    noise_model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary (for JSON)."""
        return asdict(self)

    def summary(self) -> str:
        """Describe the estimate in a paragraph for humans."""
        return " ".join(
            [
                f"Estimated PSNR gain {self.psnr_gain_db:.2f} +- {self.psnr_gain_db_sd:.2f} dB "
                f"(denoised vs raw, {self.method} photon split, {self.n_frames} frames).",
                *self.notes,
            ]
        )


def _gain_db(noise_var: float, score: float) -> float:
    mse = score - noise_var
    if mse <= 0:
        return float("inf")
    return float(10 * np.log10(noise_var / mse))


def _corr(u: np.ndarray, v: np.ndarray) -> float:
    u = u - u.mean()
    v = v - v.mean()
    return float(np.sum(u * v) / np.sqrt(np.sum(u * u) * np.sum(v * v)))


def _halves_correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Correlation of the halves' temporal differences: same pixel, and neighbours (y, x)."""
    step = max(1, a.shape[0] // 512)
    da = np.diff(a[::step].astype(np.float64), axis=0)
    db = np.diff(b[::step].astype(np.float64), axis=0)
    same = _corr(da.ravel(), db.ravel())
    ny = _corr(da[:, 1:, :].ravel(), db[:, :-1, :].ravel())
    nx = _corr(da[:, :, 1:].ravel(), db[:, :, :-1].ravel())
    return same, 0.5 * (ny + nx)


def _calmdown_denoiser(
    config: Config,
    progress: Callable[[TrainProgress], None] | None,
    training: dict[str, Any],
) -> Callable[[np.ndarray], np.ndarray]:
    """Train calmdown on a movie and denoise it (the default denoiser of the estimate)."""
    from calmdown.pipeline import iter_apply, prepare, train

    def run(movie: np.ndarray) -> np.ndarray:
        prep = prepare(movie, config)
        try:
            model = train(movie, config=config, prepared=prep, progress=progress)
            training.update(model.training)
            chunks = [c.denoised for c in iter_apply(model, movie, prepared=prep)]
        finally:
            prep.close()
        return np.concatenate(chunks).astype(np.float32, copy=False)

    return run


def estimate_gain(
    raw: np.ndarray,
    *,
    noise: NoiseModel | None = None,
    seed: int = 0,
    method: SplitMethod = "auto",
    config: Config | None = None,
    denoiser: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    block_frames: int | None = None,
    n_boot: int = 400,
    **options: Any,
) -> EvaluateResult:
    """Estimate how much a denoiser improves a recording, without ground truth.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(T, Y, X)`` raw movie in ADU. Not modified.
    noise : NoiseModel, optional
        Its noise model; estimated from ``raw`` when not given.
    seed : int
        Seed of the split (and of training, unless ``config`` or ``options`` set it).
    method : {"auto", "binomial", "gaussian"}
        The split, see :func:`photon_split`.
    config : Config, optional
        calmdown settings for training on half A; ``**options`` override single fields
        (e.g. ``max_steps=2000``, ``time_budget_s=60``).
    denoiser : callable, optional
        ``denoiser(movie_adu) -> denoised_adu`` to score instead of calmdown (it is given
        half A in ADU, with the recording's gain and offset).
    progress : callable, optional
        Training progress callback (calmdown only).
    block_frames : int, optional
        Frames per bootstrap block (default: ``max(8, T // 40)``).
    n_boot : int
        Bootstrap resamples.
    **options
        Flat calmdown options, see :func:`calmdown.make_config`.

    Returns
    -------
    EvaluateResult

    Raises
    ------
    InputError
        For a movie that is not (T, Y, X) with at least 8 frames.

    Notes
    -----
    With ``A``, ``B`` the halves, ``dA`` the denoised half A and ``V = E[(A - B)^2] / 2`` the
    noise variance of one half (the halves are uncorrelated, with equal variance),
    ``MSE(dA) = E[(dA - B)^2] - V``. Half A is given independent Gaussian noise of variance
    ``R = rn^2 / 2`` (``rn`` the read noise in photon units) before it is denoised: the split
    halves the read noise, a recording of half the photons does not. The gain is
    ``10 log10((V + R) / MSE(dA))``, that on a recording with half the photons of this one.

    Examples
    --------
    >>> from calmdown.simulate import simulate
    >>> from scipy.ndimage import uniform_filter1d
    >>> sim = simulate("dense", photons=2.0, shape=(120, 32, 32), seed=0)
    >>> res = estimate_gain(sim.raw, denoiser=lambda m: uniform_filter1d(m, 5, axis=0))
    >>> res.method, res.psnr_gain_db > 0
    ('binomial', True)
    """
    x = np.asarray(raw)
    if x.ndim != 3 or x.shape[0] < 8:
        raise InputError(
            f"evaluate needs a (T, Y, X) movie with at least 8 frames; got shape {x.shape}"
        )
    if noise is None:
        noise = estimate_noise(lambda s, e: x[s:e], x.shape[0])
    halves = split_halves(x, noise, seed=seed, method=method)
    training: dict[str, Any] = {}
    if denoiser is None:
        opts = dict(options)
        if config is None or "seed" in opts:
            opts.setdefault("seed", seed)
        cfg = make_config(config, **opts)
        denoiser = _calmdown_denoiser(cfg, progress, training)
    d_a = noise.to_photons(denoiser(noise.to_adu(halves.a)))
    result = score_halves(halves, d_a, noise, seed=seed, block_frames=block_frames, n_boot=n_boot)
    result.training = training
    logger.info("evaluate: %s", result.summary())
    return result


@dataclass
class SplitHalves:
    """The two halves of a recording that :func:`estimate_gain` denoises and scores against.

    Attributes
    ----------
    a : numpy.ndarray
        float32 half A in photon units, given the missing half of the read noise: what a
        recording with half the photons would be; the half that is denoised.
    b : numpy.ndarray
        float32 half B, the target.
    split_var : numpy.ndarray
        ``E[(a - b)^2 | input]`` per element before A's added read noise: twice the noise
        variance of one half.
    read_var : float
        Variance of the read noise given to A (photon units squared).
    method : str
        The split used, ``binomial`` or ``gaussian``.
    """

    a: np.ndarray
    b: np.ndarray
    split_var: np.ndarray
    read_var: float
    method: str


def split_halves(
    raw: np.ndarray, noise: NoiseModel, *, seed: int = 0, method: SplitMethod = "auto"
) -> SplitHalves:
    """Split ``raw`` (ADU) as :func:`estimate_gain` does, from the same ``seed``.

    Half A gets the read noise the split took from it (see :func:`estimate_gain`); every
    denoiser scored on the halves of one seed sees the same half A.
    """
    chosen = split_method(noise) if method == "auto" else method
    rng = np.random.default_rng(seed)
    a, b, split_var = _split(noise.to_photons(np.asarray(raw)), noise, rng, method=chosen)
    # A split halves the read noise with the photons, but a recording with half the photons
    # has all of it: half A gets the missing half as independent noise (B, the target, does
    # not need it), so that it is what such a recording would be. Dark pixels, where read
    # noise is most of the noise, would otherwise denoise better than they can.
    read_var = 0.5 * noise.read_noise_photons**2
    a = (a + rng.standard_normal(a.shape) * np.sqrt(read_var)).astype(np.float32)
    return SplitHalves(a, b, split_var, read_var, chosen)


def score_halves(
    halves: SplitHalves,
    d_a: np.ndarray,
    noise: NoiseModel,
    *,
    seed: int = 0,
    block_frames: int | None = None,
    n_boot: int = 400,
) -> EvaluateResult:
    """Score ``d_a``, half A denoised (photon units), against half B: the gain and its error.

    ``seed`` seeds the block bootstrap (with ``seed + 1``, as :func:`estimate_gain`).
    """
    a, b, read_var, chosen = halves.a, halves.b, halves.read_var, halves.method
    if d_a.shape != a.shape:
        raise InputError(f"the denoiser returned shape {d_a.shape} for a movie of {a.shape}")

    # Per-frame sums, for the estimate and the block bootstrap.
    n_t = a.shape[0]
    score_t = np.sum(np.square(d_a.astype(np.float64) - b), axis=(1, 2))
    var_t = 0.5 * np.sum(halves.split_var, axis=(1, 2), dtype=np.float64)
    n_pix = a.shape[1] * a.shape[2] * n_t
    v = float(var_t.sum() / n_pix)
    mse = float(score_t.sum() / n_pix) - v
    # The raw half's error: its noise variance with the read noise it was given.
    gain = _gain_db(v + read_var, v + read_var + mse)

    block = block_frames or max(8, n_t // 40)
    starts = np.arange(0, n_t, block)
    sc_b = np.add.reduceat(score_t, starts)
    va_b = np.add.reduceat(var_t, starts)
    nb = np.diff(np.append(starts, n_t)).astype(np.float64)
    boot_rng = np.random.default_rng(seed + 1)
    picks = boot_rng.integers(0, len(starts), (n_boot, len(starts)))
    n_b = nb[picks].sum(axis=1) * a.shape[1] * a.shape[2]
    v_b = va_b[picks].sum(axis=1) / n_b
    mse_b = sc_b[picks].sum(axis=1) / n_b - v_b
    with np.errstate(divide="ignore", invalid="ignore"):
        gains_b = np.where(mse_b > 0, 10 * np.log10((v_b + read_var) / mse_b), np.inf)
    finite = np.isfinite(gains_b)
    gain_sd = float(np.std(gains_b[finite])) if finite.sum() > 1 else float("nan")

    same, neighbour = _halves_correlation(a, b)
    valid = chosen == "binomial" and split_method(noise) == "binomial"
    photons = float(noise.photons_per_pixel)
    notes = [
        "A split measures the gain on a recording with half the photons of this one "
        f"({photons / 2:.3g} instead of {photons:.3g} photons per pixel per frame); the gain "
        "on the full recording can differ and is not measured here. The +- is sampling "
        "error over frames only (a retrained model varies too).",
    ]
    if chosen == "gaussian":
        notes.append(
            "The noise of this movie is correlated between neighbouring pixels (neighbour "
            f"correlation y {noise.neighbour_correlation[0]:.2f}, x "
            f"{noise.neighbour_correlation[1]:.2f}; per-pixel variance "
            f"{noise.variance_ratio:.2f} of the photon count's), as after registration or "
            "filtering: a binomial photon split is not valid (each pixel's value mixes photons "
            "of its neighbours, so halves split pixel by pixel stay correlated across pixels). "
            "A Gaussian split with the measured noise covariance was used; its halves are "
            "uncorrelated but not fully independent at low counts, so the estimate is "
            "approximate."
        )
    elif not valid:
        notes.append(
            "A binomial split was forced on a movie whose noise is correlated between "
            "neighbouring pixels: the halves are correlated across pixels and the estimate "
            "is optimistic."
        )
    if not np.isfinite(gain):
        notes.append(
            "The denoiser's error is below what the split can measure here (the estimated "
            "error is not positive); use a longer recording."
        )
    if abs(same) > 0.02 or abs(neighbour) > 0.02:
        warnings.warn(
            f"the two halves of the split are correlated (same pixel {same:.3f}, neighbours "
            f"{neighbour:.3f}): the gain estimate is biased",
            UserWarning,
            stacklevel=3,
        )
    return EvaluateResult(
        psnr_gain_db=gain,
        psnr_gain_db_sd=gain_sd,
        mse_raw=v + read_var,
        mse_denoised=mse,
        mse_denoised_sd=float(np.std(mse_b)),
        method=chosen,
        split_valid=valid,
        photons_per_pixel=photons,
        photons_per_pixel_half=photons / 2,
        halves_correlation=same,
        halves_neighbour_correlation=neighbour,
        n_frames=n_t,
        block_frames=int(block),
        noise_model=noise.to_dict(),
        notes=notes,
    )
