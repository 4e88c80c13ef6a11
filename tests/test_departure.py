"""The prior's departure from the mean image, at the share held-out values confirm."""

from __future__ import annotations

import numpy as np
import torch

from calmdown.departure import DepartureCorrection, fit_departure


def _parts(share: float, seed: int, n_runs: int = 6) -> tuple[list[tuple], list[torch.Tensor]]:
    """Make runs whose prior departs from the mean image by ``d``, ``share`` of it real.

    Levels from 0.5 to 20 photons, departures of a few noise sd of the mean image; the raw
    values carry Poisson-like noise (variance = clean value) that the fit is not told about.
    """
    g = torch.Generator().manual_seed(seed)
    parts, cleans = [], []
    for _ in range(n_runs):
        level = 0.5 + 19.5 * torch.rand((1, 40, 40), generator=g)
        d = torch.randn((60, 40, 40), generator=g) * 0.3 * torch.sqrt(level)
        loc = level + d
        clean = level + share * d
        x = clean + torch.randn(clean.shape, generator=g) * torch.sqrt(clean.clamp(min=0.1))
        target = torch.zeros(60, dtype=torch.bool)
        target[5:55] = True
        parts.append((x, loc, level, target))
        cleans.append(clean)
    return parts, cleans


def test_recovers_the_share_of_the_departure_that_is_real():
    for share in (0.2, 0.6):
        parts, cleans = _parts(share, seed=1)
        fitted = fit_departure(parts)
        slopes = np.array(fitted.slopes)
        assert slopes.shape == (len(fitted.level_edges) + 1, len(fitted.deviation_edges) + 1)
        # Where the departures are large enough to matter (above the median), each cell's
        # slope is the share to its standard error, pulled a little toward 1; the smallest
        # departures' cells are known to +-0.25 and move their pixels by little.
        large = slopes[:, 2:]
        assert (large > share - 0.1).all() and (large < share + 0.15).all(), slopes
        _, loc, level, _ = parts[0]
        new_loc, extra = fitted.apply(loc, level)
        assert extra is not None
        err_before = ((loc - cleans[0]) ** 2).mean()
        err_after = ((new_loc - cleans[0]) ** 2).mean()
        assert err_after < 0.1 * err_before
        # The variance of not knowing whether it was real: b (1 - b) d^2.
        d = loc - level
        b = (new_loc - level) / d
        assert torch.allclose(extra, b * (1 - b) * d * d, rtol=1e-4, atol=1e-6)


def test_a_prior_whose_departures_are_real_is_left_alone():
    parts, _ = _parts(1.0, seed=2)
    fitted = fit_departure(parts)
    slopes = np.array(fitted.slopes)
    assert np.abs(slopes[:, 2:] - 1).max() < 0.1, slopes  # as above: the larger departures
    x, loc, level, _ = parts[0]
    new_loc, extra = fitted.apply(loc, level)
    assert extra is not None
    # Slopes near 1 move the prior little and add little variance (against the noise var).
    assert ((new_loc - loc) ** 2).mean() < 0.01 * ((x - loc) ** 2).mean()
    assert extra.mean() < 0.01 * ((x - loc) ** 2).mean()


def test_nothing_to_fit_on_gives_the_identity():
    parts, _ = _parts(0.3, seed=3, n_runs=1)
    x, loc, level, target = parts[0]
    fitted = fit_departure([(x, loc, level, torch.zeros_like(target))])
    assert fitted.is_identity
    same, extra = fitted.apply(loc, level)
    assert same is loc and extra is None


def test_round_trip_through_plain_types():
    parts, _ = _parts(0.4, seed=4, n_runs=2)
    fitted = fit_departure(parts)
    again = DepartureCorrection.from_dict(fitted.to_dict())
    assert again == fitted
    _, loc, level, _ = parts[1]
    a, ea = fitted.apply(loc, level)
    b, eb = again.apply(loc, level)
    assert torch.equal(a, b) and torch.equal(ea, eb)
