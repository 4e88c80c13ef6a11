import numpy as np
import torch
import torch.nn.functional as F

from calmdown.samples import RADIUS, MeanNoiseCoupling, estimate_error_correlation


def _smooth(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (T, Y, X) white noise, rescaled to unit variance."""
    d = torch.arange(-6, 7, dtype=torch.float64)
    g = torch.exp(-(d**2) / (2 * sigma**2))
    k = (g[:, None] * g[None, :])[None, None]
    out = F.conv2d(F.pad(z[:, None], (6, 6, 6, 6), mode="circular"), k)[:, 0]
    return out / out.std()


def _residuals(
    *, static: float, decay: float, coupling: float, seed: int = 0
) -> tuple[list[tuple[torch.Tensor, ...]], float]:
    """Held-out runs of residuals ``x - loc = n - e`` with a known error model.

    The prior's error ``e`` has a static part of share ``static``, white between pixels, of
    which ``coupling`` of the variance is the mean image's noise (so it is made of the frames'
    own noise, as in a real prior), and a changing part, smooth in space (neighbour
    correlation ~0.88) and AR(1) in time with lag-1 correlation ``decay``.
    """
    gen = torch.Generator().manual_seed(seed)
    t_len, n_runs, size, nv, pv = 120, 6, 48, 1.0, 0.04
    parts = []
    for _ in range(n_runs):
        noise = torch.randn((t_len, size, size), generator=gen, dtype=torch.float64) * nv**0.5
        # The mean image averages N frames of noise; the run is part of them.
        n_mean = round(nv / (coupling * static * pv))
        others = torch.randn((size, size), generator=gen, dtype=torch.float64)
        mean_noise = (noise.sum(0) + others * (nv * (n_mean - t_len)) ** 0.5) / n_mean
        rest = torch.randn((size, size), generator=gen, dtype=torch.float64)
        e_static = mean_noise + rest * ((1 - coupling) * static * pv) ** 0.5
        white = torch.randn((t_len, size, size), generator=gen, dtype=torch.float64)
        field = _smooth(white, 2.0)
        changing = torch.empty_like(field)
        changing[0] = field[0]
        for t in range(1, t_len):
            changing[t] = decay * changing[t - 1] + (1 - decay**2) ** 0.5 * field[t]
        e = e_static + changing * ((1 - static) * pv) ** 0.5
        target = torch.zeros(t_len, dtype=torch.bool)
        target[52:68] = True
        nvar = torch.full((t_len, size, size), nv, dtype=torch.float64)
        parts.append((noise - e, torch.full_like(nvar, pv), nvar, target))
    return parts, nv / n_mean


def test_the_static_part_is_measured_apart_from_the_changing_part():
    parts, mean_var = _residuals(static=0.3, decay=0.8, coupling=0.6)
    grid = np.zeros((2 * RADIUS + 1,) * 2)
    grid[RADIUS, RADIUS] = mean_var  # the mean image passed on with gain 1, pixel by pixel
    corr = estimate_error_correlation(
        parts, noise_correlation=(0.0, 0.0), context_frames=3, mean_coupling=grid
    )
    assert corr.static_spatial is not None
    assert abs(corr.static - 0.3) < 0.08, corr.static
    # The static part is white between pixels, the changing part smooth.
    assert abs(corr.static_spatial[RADIUS][RADIUS + 1]) < 0.15
    assert corr.spatial[RADIUS][RADIUS + 1] > 0.7
    assert abs(corr.decay - 0.8) < 0.1, corr.decay
    # Without the coupling, the static part is read far too small (the products of distant
    # frames hold -2 nv / N) and one correlation serves both parts, as in older model files.
    blind = estimate_error_correlation(parts, noise_correlation=(0.0, 0.0), context_frames=3)
    assert blind.static_spatial is None
    assert blind.static < 0.15


def test_the_mean_image_coupling_is_read_from_probes():
    gen = torch.Generator().manual_seed(1)
    sd = 0.1
    pert = torch.randn((40, 32, 32), generator=gen, dtype=torch.float64) * sd
    # A prior that passes the mean image on at 0.7 and spreads 0.1 to the right-hand pixel.
    response = 0.7 * pert + 0.1 * torch.roll(pert, 1, dims=2)
    coupling = MeanNoiseCoupling()
    coupling.add(pert[:20], response[:20])
    coupling.add(pert[20:], response[20:])
    grid = coupling.grid()
    assert grid is not None
    assert abs(grid[RADIUS, RADIUS] / sd**2 - 0.7) < 0.03
    assert abs(grid[RADIUS, RADIUS + 1] / sd**2 - 0.1) < 0.03
    assert abs(grid[RADIUS, RADIUS - 1] / sd**2) < 0.03
    assert MeanNoiseCoupling().grid() is None
