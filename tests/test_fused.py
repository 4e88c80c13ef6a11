"""The compiled (Numba) loops give the PyTorch code's values to the bit, faster."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import calmdown
from calmdown import fused
from calmdown.calibration import (
    CHANGE_FRAMES,
    CHANGE_PIXELS,
    CalibrationStages,
    ScaleCalibration,
    StratifiedCalibration,
    bin_index,
    temporal_change,
)
from calmdown.config import GuardConfig
from calmdown.posterior import (
    _window_sum_1d,
    evidence_windows,
    evidence_zscores,
    surprise_guard,
)
from calmdown.simulate import SimulatedMovie

pytest.importorskip("numba")

SHAPES = [(40, 23, 37), (5, 4, 6), (2, 3, 3), (1, 5, 4), (9, 1, 7)]


def _counts(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    values = rng.poisson(1.3, shape) * 0.8 + rng.normal(0, 0.1, shape)
    return torch.from_numpy(values.astype(np.float32))


def _both(monkeypatch: pytest.MonkeyPatch, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``f`` with the PyTorch code, then with the compiled loops."""
    monkeypatch.setenv("CALMDOWN_NO_NUMBA", "1")
    slow = f(*args, **kwargs)
    monkeypatch.setenv("CALMDOWN_NO_NUMBA", "0")
    assert fused.enabled(args[0])
    return slow, f(*args, **kwargs)


@pytest.mark.parametrize("shape", SHAPES)
def test_window_sums_equal_the_pytorch_code(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int]
) -> None:
    x = _counts(shape) - 1.0
    for dim in (0, 1, 2):
        for half in (1, 3, 4, 15):
            slow, fast = _both(monkeypatch, _window_sum_1d, x, dim, half)
            assert torch.equal(slow, fast), (dim, half)
    for window in evidence_windows(GuardConfig(line_pixels=5)):
        slow, fast = _both(monkeypatch, window.spatial_sum, x)
        assert torch.equal(slow, fast), window.name


@pytest.mark.parametrize("shape", SHAPES)
def test_temporal_change_and_bins_equal_the_pytorch_code(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int]
) -> None:
    x = _counts(shape, seed=1)
    slow, fast = _both(monkeypatch, temporal_change, x)
    assert torch.equal(slow, fast)
    assert (CHANGE_PIXELS, CHANGE_FRAMES) == (5, 3)
    edges = [0.25, 0.5, 0.8, 1.0, 1.6, 3.0]
    # Values on and next to the edges, where float32 and float64 comparisons differ.
    x.view(-1)[:3] = torch.tensor([0.8, float(np.nextafter(np.float32(0.8), 1)), 1.6])
    slow, fast = _both(monkeypatch, bin_index, x, edges)
    assert torch.equal(slow, fast)
    assert fast.dtype == torch.long


def test_calibration_stages_equal_the_pytorch_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # All stages in one compiled pass: each stage's feature is read on the variance the stages
    # before it left, and the bins compare in float32, as in PyTorch.
    rng = np.random.default_rng(3)
    shape = (30, 17, 23)
    var = torch.from_numpy(rng.gamma(1.0, 0.02, shape).astype(np.float32))
    var[0, 0, :3] = torch.tensor([0.0, 1e-13, 0.01])  # below the floor, and on an edge
    loc = _counts(shape, seed=1)
    level = loc.mean(dim=0)  # broadcast along time
    change = temporal_change(_counts(shape, seed=2))
    stages = CalibrationStages(
        [
            StratifiedCalibration([0.8, 1.1], [0.5, 1.0, 2.0], rng.uniform(0.5, 2, (3, 4)).tolist(),
                                  feature="change"),
            StratifiedCalibration([1.0], [1.5, 3.0], rng.uniform(0.5, 2, (2, 3)).tolist()),
            StratifiedCalibration([], [0.2, 0.4], [[0.9, 1.3, 1.7]], feature="deviation"),
            StratifiedCalibration([], [], [[1.37]], feature="change"),
        ]
    )  # fmt: skip
    slow, fast = _both(monkeypatch, stages.apply, var, loc, level, change)
    assert torch.equal(slow, fast)
    assert not torch.equal(fast, var)
    scale = ScaleCalibration([0.005, 0.01, 0.03], [0.7, 1.2, 0.9, 2.5])
    slow, fast = _both(monkeypatch, scale.apply, var)
    assert torch.equal(slow, fast)
    assert not torch.equal(fast, var)


@pytest.mark.parametrize(
    "cfg",
    [
        GuardConfig(),
        GuardConfig(local_pixels=3, window_pixels=5, pixel_windows=(3, 31), line_frames=3),
        GuardConfig(window_frames=1, local_frames=3),
    ],
)
def test_surprise_guard_equals_the_pytorch_code(
    monkeypatch: pytest.MonkeyPatch, cfg: GuardConfig
) -> None:
    x = _counts((60, 19, 26), seed=2)
    loc = torch.full_like(x, 1.04) + 0.01 * torch.randn(x.shape, generator=torch.manual_seed(3))
    x[25:32, 8:11, 10:14] += 6.0  # a surprise the guard must find
    prior_var = torch.full_like(x, 0.004)
    noise_var = 0.8 * loc + 0.03
    slow, fast = _both(
        monkeypatch, surprise_guard, x, loc, prior_var, noise_var, cfg, null_scale=1.3,
        frames=slice(12, 50),
    )  # fmt: skip
    assert float(fast.p_surprise.max()) > 0.99
    for name in ("loc", "var", "p_surprise", "guard_var"):
        assert torch.equal(getattr(slow, name), getattr(fast, name)), name
    slow_z, fast_z = _both(monkeypatch, evidence_zscores, x - loc, prior_var + noise_var, cfg)
    assert all(torch.equal(a, b) for a, b in zip(slow_z, fast_z, strict=True))


def test_denoised_movie_is_the_same_with_and_without_numba(
    monkeypatch: pytest.MonkeyPatch,
    small_sim: SimulatedMovie,
    small_model: calmdown.TrainedModel,
) -> None:
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("CALMDOWN_NO_NUMBA", flag)
        run = calmdown.iter_apply(
            small_model, small_sim.raw, interval=0.9, samples=2, chunk_frames=64
        )
        chunks = list(run)
        out[flag] = {
            name: np.concatenate([getattr(c, name) for c in chunks], axis=int(name == "samples"))
            for name in ("denoised", "lower", "upper", "p_surprise", "samples")
        }
    for name, value in out["1"].items():
        np.testing.assert_array_equal(value, out["0"][name], err_msg=name)


def test_compiled_guard_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _counts((120, 24, 256), seed=4)
    loc = torch.full_like(x, 1.04)
    args = (x, loc, torch.full_like(x, 0.004), 0.8 * loc + 0.03, GuardConfig())
    seconds = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("CALMDOWN_NO_NUMBA", flag)
        surprise_guard(*args, frames=slice(20, 100))  # compiled or loaded from the cache
        start = time.perf_counter()
        for _ in range(3):
            surprise_guard(*args, frames=slice(20, 100))
        seconds[flag] = time.perf_counter() - start
    # 2.4x measured on one core (0.47 against 0.20 s per band of 150 x 27 x 512).
    assert seconds["0"] < 0.8 * seconds["1"], seconds


def test_enabled_only_for_float32_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALMDOWN_NO_NUMBA", raising=False)
    assert fused.enabled(torch.zeros(3, dtype=torch.float32))
    assert not fused.enabled(torch.zeros(3, dtype=torch.float64))
    assert not fused.enabled(torch.zeros(3, requires_grad=True))
    monkeypatch.setenv("CALMDOWN_NO_NUMBA", "1")
    assert not fused.enabled(torch.zeros(3, dtype=torch.float32))


def test_values_do_not_depend_on_the_number_of_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALMDOWN_NO_NUMBA", raising=False)
    x = _counts((50, 48, 64), seed=5)  # 153600 values: split between up to 2 threads
    loc = torch.full_like(x, 1.04)
    x[20:26, 10:13, 30:33] += 6.0
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            guard = surprise_guard(
                x, loc, torch.full_like(x, 0.004), 0.8 * loc + 0.03, GuardConfig()
            )
            change = temporal_change(x)
            results.append((guard.p_surprise, guard.var, change, bin_index(change, [0.1, 0.3])))
    finally:
        torch.set_num_threads(threads)
    assert float(results[0][0].max()) > 0.99
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def _sum_in_child(queue: Any) -> None:
    x = _counts((30, 40, 128), seed=6)  # 153600 values: two threads
    # Summed in NumPy: PyTorch's own OpenMP threads deadlock in a forked child.
    queue.put(float(fused.running_sum(x, 3).numpy().astype(np.float64).sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_gets_threads_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALMDOWN_NO_NUMBA", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = _counts((30, 40, 128), seed=6)
        expected = float(fused.running_sum(x, 3).numpy().astype(np.float64).sum())  # a pool now
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_sum_in_child, args=(queue,))
        child.start()
        child.join(timeout=120)
        if child.is_alive():  # the pool's threads are the parent's: the work never runs
            child.kill()
            pytest.fail("the forked process hung in the compiled loops' thread pool")
        assert queue.get(timeout=5) == expected
    finally:
        torch.set_num_threads(threads)
