"""Neighbouring planes as context: J-invariance, what they buy, persistence, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

import calmdown
from calmdown.cli import app
from calmdown.errors import InputError
from calmdown.io import open_movie
from calmdown.neighbours import neighbour_numbers
from calmdown.network import ContextNet
from calmdown.persist import load_model
from calmdown.simulate import Detector, record, simulate

runner = CliRunner()
FAST = ["--max-steps", "5", "--time-budget", "30"]
DASK = ["--plane-context", "--dask"]


def test_neighbours_are_the_planes_above_and_below() -> None:
    assert neighbour_numbers(1, 2) == (2, 2)
    assert neighbour_numbers(2, 2) == (1, 1)
    assert neighbour_numbers(3, 5) == (2, 4)
    with pytest.raises(InputError, match="at least two planes"):
        neighbour_numbers(1, 1)


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return a plane, a neighbour that sees the same tissue at 0.7x (own noise), the truth."""
    sim = simulate("dense", photons=1.0, shape=(300, 48, 48), seed=3)
    other = record(0.7 * sim.photons, sim.detector, seed=11)
    return sim.raw, other, sim.clean


def test_the_prior_of_frame_t_never_sees_frame_t_of_its_own_plane(volume) -> None:
    """Changing frame t of the plane leaves its prior at t; changing the neighbours' does not."""
    raw, other, _ = volume
    raw, other = raw[:80], other[:80]
    fixed = {"gain": 12.5, "offset": 100.0, "read_noise": 2.0}  # no noise estimate to perturb
    model = calmdown.train(
        raw, neighbours=[other, other], max_steps=20, time_budget_s=None, seed=0, **fixed
    )
    for p in model.state_dict.values():  # the zero-initialised head would hide dependences
        p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(1)) * 0.05)
    model._net = None

    def prior(movie: np.ndarray, planes: np.ndarray) -> np.ndarray:
        return calmdown.apply(model, movie, neighbours=[planes, planes], output="prior", **fixed)

    base = prior(raw, other)
    bumped = raw.copy()
    bumped[40] += 500.0
    changed = prior(bumped, other)
    np.testing.assert_allclose(changed[40], base[40], rtol=1e-4, atol=1e-2)
    assert np.abs(changed[41] - base[41]).max() > 1.0  # frame 40 is context of frame 41
    moved = other.copy()
    moved[40] += 500.0
    assert np.abs(prior(raw, moved)[40] - base[40]).max() > 1.0  # the neighbours at t count
    net = ContextNet(context_frames=2, width=8, neighbour_channels=2)
    with pytest.raises(ValueError, match="2 neighbour-plane channels, got 4"):
        net(torch.rand(1, 1, 16, 16), torch.rand(1, 4, 16, 16))


def test_a_neighbour_that_sees_what_happens_at_t_sharpens_the_prior() -> None:
    """A neighbour that sees what happens at frame t makes a better prior of frame t.

    Spots blink at random (white in time: the plane's own frames t +- k cannot say whether a
    spot is on at t); the neighbouring plane sees them too, with its own noise.
    """
    rng = np.random.default_rng(0)
    spots = np.zeros((6, 32, 32), np.float32)
    for spot in spots:
        spot[tuple(rng.integers(4, 28, 2))] = 1.0
        spot[:] = gaussian_filter(spot, 2.5) / gaussian_filter(spot, 2.5).max()
    on = (rng.random((200, 6)) < 0.3).astype(np.float32)
    photons = 1.0 + 6.0 * np.tensordot(on, spots, axes=1)
    detector = Detector()
    raw = record(photons, detector, seed=1)
    other = record(0.7 * photons, detector, seed=2)
    clean = detector.offset + detector.conversion_gain * photons
    # The noise model given: the blinking, white in time, would pass for noise.
    options = {"max_steps": 150, "time_budget_s": None, "seed": 0, "gain": 12.5}
    options |= {"offset": 100.0, "read_noise": 2.0}
    alone = calmdown.apply(calmdown.train(raw, **options), raw, output="prior")
    model = calmdown.train(raw, neighbours=[other, other], **options)
    assert model.config.model.plane_context
    both = calmdown.apply(model, raw, neighbours=[other, other], output="prior")
    gain_db = 10 * np.log10(np.mean((alone - clean) ** 2) / np.mean((both - clean) ** 2))
    assert gain_db > 2.5, gain_db  # measured 3.75 dB (5.0 dB with 240 frames, 200 steps)


def test_a_model_with_plane_context_needs_them_everywhere(volume, tmp_path: Path) -> None:
    raw, other, _ = volume
    model = calmdown.train(
        raw[:80], neighbours=[other[:80]] * 2, max_steps=5, time_budget_s=None, seed=0
    )
    with pytest.raises(InputError, match="takes the neighbouring planes"):
        calmdown.apply(model, raw[:80])
    plain = calmdown.train(raw[:80], max_steps=5, time_budget_s=None, seed=0)
    with pytest.raises(InputError, match="trained without them"):
        calmdown.apply(plain, raw[:80], neighbours=[other[:80]] * 2)
    with pytest.raises(InputError, match="neighbouring plane has shape"):
        calmdown.train(raw[:80], neighbours=[other[:60]] * 2, max_steps=5)


@pytest.fixture(scope="module")
def zstack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write three planes of one volume (TZYX TIFF), each seeing the same tissue more dimly."""
    sim = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    planes = [sim.raw, record(0.7 * sim.photons, seed=1), record(0.5 * sim.photons, seed=2)]
    path = tmp_path_factory.mktemp("volume") / "volume.tif"
    movie = np.stack(planes, axis=1).clip(0, 65535).astype("uint16")
    tifffile.imwrite(path, movie, photometric="minisblack", metadata={"axes": "TZYX"})
    return path


def test_denoise_and_apply_with_plane_context(zstack: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    args = ["denoise", str(zstack), "-o", str(out), "--plane", "2", "--plane-context", *FAST]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    model = load_model(tmp_path / "out.model.pt")
    assert model.config.model.plane_context
    again = tmp_path / "again.tif"
    res = runner.invoke(
        app,
        ["apply", str(tmp_path / "out.model.pt"), str(zstack), "-o", str(again), "--plane", "2"],
    )
    assert res.exit_code == 0, res.output
    with open_movie(out) as a, open_movie(again) as b:
        np.testing.assert_allclose(a.read(0, 60), b.read(0, 60), rtol=1e-5, atol=1e-3)

    res = runner.invoke(
        app, ["apply", str(tmp_path / "out.model.pt"), str(zstack), "-o", str(tmp_path / "x.tif")]
    )
    assert res.exit_code == 2, res.output
    assert "--plane-context feeds the planes above and below" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.tif").exists()


def test_every_plane_of_a_volume_with_plane_context(zstack: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    args = ["denoise", str(zstack), "-o", str(out), "--plane", "all", "--plane-context", *FAST]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for n in (1, 2, 3):
        assert load_model(tmp_path / f"out.plane{n}.model.pt").config.model.plane_context
        with open_movie(tmp_path / f"out.plane{n}.tif") as reader:
            assert reader.shape == (60, 32, 32)


def test_plane_context_is_refused_where_it_cannot_work(zstack: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.ones((30, 16, 16), "u2"), photometric="minisblack")
    res = runner.invoke(
        app, ["denoise", str(flat), "-o", str(tmp_path / "o.tif"), "--plane-context", *FAST]
    )
    assert res.exit_code == 2 and "needs a volume recording and --plane N" in res.output
    res = runner.invoke(
        app,
        ["denoise", str(zstack), "-o", str(tmp_path / "o.zarr"), "--plane", "1", *DASK, *FAST],
    )
    assert res.exit_code == 2 and "does not run on Dask yet" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.tif"]
