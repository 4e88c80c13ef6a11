"""The variance of the prior's departure from the mean image that held-out values doubt."""

from __future__ import annotations

import numpy as np
import torch

from calmdown.departure import DepartureVariance, fit_departure


def _parts(share: float, seed: int, n_runs: int = 6) -> tuple[list[tuple], list[torch.Tensor]]:
    """Make runs whose prior departs from the mean image by ``d``, real with chance ``share``.

    Levels from 0.5 to 20 photons, departures of a few noise sd of the mean image; the raw
    values carry Poisson-like noise (variance = clean value) that the fit is not told about.
    """
    g = torch.Generator().manual_seed(seed)
    parts, cleans = [], []
    for _ in range(n_runs):
        level = 0.5 + 19.5 * torch.rand((1, 40, 40), generator=g)
        d = torch.randn((60, 40, 40), generator=g) * 0.3 * torch.sqrt(level)
        loc = level + d
        real = (torch.rand(d.shape, generator=g) < share).float()
        clean = level + real * d
        x = clean + torch.randn(clean.shape, generator=g) * torch.sqrt(clean.clamp(min=0.1))
        target = torch.zeros(60, dtype=torch.bool)
        target[5:55] = True
        parts.append((x, loc, level, target))
        cleans.append(clean)
    return parts, cleans


def test_states_the_error_of_departures_that_are_real_only_sometimes():
    for share in (0.2, 0.6):
        parts, cleans = _parts(share, seed=1)
        fitted = fit_departure(parts)
        slopes = np.array(fitted.slopes)
        assert slopes.shape == (len(fitted.level_edges) + 1, len(fitted.deviation_edges) + 1)
        # Where the departures are large enough to matter (above the median), each cell's
        # slope is the share real, to its standard error, pulled a little toward 1; the
        # smallest departures' cells are known to +-0.25 and add little variance.
        large = slopes[:, 2:]
        assert (large > share - 0.1).all() and (large < share + 0.15).all(), slopes
        # The added variance is the prior's error: (1 - share) d^2 on average.
        _, loc, level, _ = parts[0]
        extra = fitted.apply(loc, level)
        assert extra is not None and (extra >= 0).all()
        ratio = float(extra.sum() / ((loc - cleans[0]) ** 2).sum())
        assert 0.85 < ratio < 1.15, ratio


def test_a_prior_whose_departures_are_real_adds_little():
    parts, _ = _parts(1.0, seed=2)
    fitted = fit_departure(parts)
    slopes = np.array(fitted.slopes)
    assert np.abs(slopes[:, 2:] - 1).max() < 0.1, slopes  # as above: the larger departures
    x, loc, level, _ = parts[0]
    extra = fitted.apply(loc, level)
    assert extra is not None
    assert extra.mean() < 0.01 * ((x - loc) ** 2).mean()  # against the noise variance


def test_nothing_to_fit_on_adds_nothing():
    parts, _ = _parts(0.3, seed=3, n_runs=1)
    x, loc, level, target = parts[0]
    fitted = fit_departure([(x, loc, level, torch.zeros_like(target))])
    assert fitted.is_identity
    assert fitted.apply(loc, level) is None


def test_round_trip_through_plain_types():
    parts, _ = _parts(0.4, seed=4, n_runs=2)
    fitted = fit_departure(parts)
    again = DepartureVariance.from_dict(fitted.to_dict())
    assert again == fitted
    _, loc, level, _ = parts[1]
    assert torch.equal(fitted.apply(loc, level), again.apply(loc, level))
