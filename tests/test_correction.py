import numpy as np
import torch

from calmdown.correction import ResidualCorrection, fit_correction

WINDOWS = {"evidence": (3, 9), "local": (1, 9), "core": 1}


def _parts(miss: float, seed: int, n_runs: int = 6):
    """Residual data where the prior misses ``miss`` photons over 12 x 12 blobs in some frames."""
    rng = np.random.default_rng(seed)
    parts, truths = [], []
    for _ in range(n_runs):
        shape = (24, 48, 48)
        clean = np.full(shape, 2.0, np.float32)
        for _ in range(4):
            t, y, x = rng.integers(0, 22), rng.integers(0, 36), rng.integers(0, 36)
            clean[t : t + 2, y : y + 12, x : x + 12] += miss
        x_obs = rng.poisson(clean).astype(np.float32)
        loc = torch.full(shape, 2.0)
        target = torch.ones(shape[0], dtype=torch.bool)
        parts.append((torch.from_numpy(x_obs), loc, torch.full(shape, 0.01), loc.clone(), target))
        truths.append(torch.from_numpy(clean))
    return parts, truths


def test_no_gain_where_the_prior_is_right():
    stage = fit_correction(_parts(0.0, 0)[0], **WINDOWS)
    fitted = [g for g, f in zip(stage.gains[:5], stage.var_factors[:5], strict=True) if f != 1.0]
    assert fitted, "no bin was fitted"
    assert max(stage.gains[:4]) < 0.1


def test_coherent_misses_are_added_back_and_widen_the_variance():
    parts, truths = _parts(1.5, 1)
    stage = fit_correction(parts, **WINDOWS)
    x, loc, pv, nv, _ = parts[0]
    new_loc, new_var, _ = stage.apply(x, loc, pv, nv)
    missed = truths[0] > loc
    # Over the missed blobs, most of the miss is restored; elsewhere little changes.
    assert float((new_loc - loc)[missed].mean()) > 0.6 * 1.5
    assert float((new_loc - loc)[~missed].abs().mean()) < 0.1
    assert float(new_var[missed].mean()) > 5 * float(pv[missed].mean())


def test_round_trip_dict():
    stage = fit_correction(_parts(1.0, 2, n_runs=2)[0], **WINDOWS)
    assert ResidualCorrection.from_dict(stage.to_dict()) == stage
