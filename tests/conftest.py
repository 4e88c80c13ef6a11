"""Shared fixtures: small simulated movies and one trained model per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import calmdown
from calmdown.simulate import SimulatedMovie, simulate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def small_sim() -> SimulatedMovie:
    """Simulate a dense movie at 1.5 photons, 300 frames of 64 x 64 (seeded)."""
    return simulate("dense", photons=1.5, shape=(300, 64, 64), seed=3)


@pytest.fixture(scope="session")
def small_model(small_sim: SimulatedMovie) -> calmdown.TrainedModel:
    """Train a model briefly on ``small_sim``."""
    return calmdown.train(small_sim.raw, max_steps=300, time_budget_s=60, seed=0, val_every=50)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Locate the real recordings beside the checkout (skips where a clone has none)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no real recordings at {SHARED_DATA} (they live beside the checkout)")
    return SHARED_DATA


def psnr(est: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB with the clean movie's range as peak."""
    rng = float(clean.max() - clean.min())
    return float(10 * np.log10(rng**2 / np.mean((est.astype(np.float64) - clean) ** 2)))
