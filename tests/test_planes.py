"""Multi-plane recordings: ``denoise --plane all`` gives each plane its own noise model."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import calmdown.cli
from calmdown.cli import app
from calmdown.io import count_planes, open_movie
from calmdown.persist import load_model
from calmdown.simulate import Detector, simulate
from tests.io.test_scanimage import make, write_si

runner = CliRunner()
FAST = ["--max-steps", "5", "--time-budget", "30"]
SHAPE = (60, 32, 32)
#: (gain, offset) of each plane's detector; ADU per photon is gain x ENF (1.25).
DETECTORS = [(5.0, 100.0), (20.0, 400.0)]


@pytest.fixture(scope="module")
def zstack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a TZYX TIFF of two planes recorded with different detector gains and offsets."""
    planes = [
        simulate("dense", photons=2.0, shape=SHAPE, seed=i, detector=Detector(gain=g, offset=o)).raw
        for i, (g, o) in enumerate(DETECTORS)
    ]
    path = tmp_path_factory.mktemp("planes") / "zstack.tif"
    movie = np.stack(planes, axis=1).astype("uint16")
    tifffile.imwrite(path, movie, photometric="minisblack", metadata={"axes": "TZYX"})
    return path


@pytest.fixture(scope="module")
def denoised(zstack: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run ``denoise --plane all`` once; return the output folder and the printed text."""
    folder = tmp_path_factory.mktemp("out")
    args = ["denoise", str(zstack), "-o", str(folder / "out.tif"), "--plane", "all"]
    res = runner.invoke(app, [*args, "--interval", "0.9", *FAST])
    assert res.exit_code == 0, res.output
    return folder, res.output


def test_every_plane_is_written_with_its_own_files(denoised: tuple[Path, str]) -> None:
    folder, _ = denoised
    for n in (1, 2):
        with open_movie(folder / f"out.plane{n}.tif") as reader:
            assert reader.shape == SHAPE and reader.dtype == np.float32
        for extra in ("lower.tif", "upper.tif", "model.pt", "calmdown.json"):
            assert (folder / f"out.plane{n}.{extra}").is_file(), extra
    assert not (folder / "out.tif").exists()
    assert not list(folder.glob("*.partial")) and not list(folder.glob("*.checkpoint.pt"))


def test_each_plane_has_its_own_noise_model(denoised: tuple[Path, str]) -> None:
    folder, output = denoised
    for n, (gain, offset) in enumerate(DETECTORS, start=1):
        sidecar = json.loads((folder / f"out.plane{n}.calmdown.json").read_text())
        assert sidecar["plane"] == n and sidecar["planes"] == 2
        noise = sidecar["noise_model"]
        # One shared model would be off by 2x for at least one plane (the gains differ 4x).
        assert noise["gain"] == pytest.approx(gain * 1.25, rel=0.3), noise
        assert noise["offset"] == pytest.approx(offset, abs=20), noise
        model = load_model(folder / f"out.plane{n}.model.pt")
        assert model.noise.gain == pytest.approx(noise["gain"])
    for n in (1, 2):
        assert f"Plane {n} of 2:" in output and f"plane {n} of 2" in output
    assert "each with its own noise model" in output


def test_count_planes(tmp_path: Path, zstack: Path) -> None:
    assert count_planes(zstack) == 2
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 5, 6), "u2"), photometric="minisblack")
    assert count_planes(plain) is None
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = np.zeros((4, 5, 6), "u2")
    assert count_planes(h5) is None
    assert count_planes(np.zeros((4, 5, 6))) is None
    si = write_si(tmp_path / "si.tif", make(t=4, planes=3, channels=2), [1, 2])
    assert count_planes(si) == 3
    one = write_si(tmp_path / "one.tif", make(t=4, planes=1, channels=1), [1])
    assert count_planes(one) == 1


@pytest.mark.parametrize("suffix", [".tif", ".h5"])
def test_plane_all_without_planes_is_refused(tmp_path: Path, suffix: str) -> None:
    raw = tmp_path / f"flat{suffix}"
    movie = np.ones((20, 8, 8), "u2")
    if suffix == ".h5":
        with h5py.File(raw, "w") as f:
            f["data"] = movie
    else:
        tifffile.imwrite(raw, movie, photometric="minisblack")
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["denoise", str(raw), "-o", str(out), "--plane", "all", *FAST])
    assert res.exit_code == 2, res.output
    assert f"flat{suffix}: --plane all needs a recording with planes" in res.output
    assert "leave --plane out" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"flat{suffix}"]


def test_bad_plane_values(zstack: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out.tif")
    res = runner.invoke(app, ["denoise", str(zstack), "-o", out, "--plane", "every"])
    assert res.exit_code == 2 and "not a plane" in res.output and "--plane all" in res.output
    res = runner.invoke(app, ["train", str(zstack), "-o", str(tmp_path / "m.pt"), "--plane", "all"])
    assert res.exit_code == 2 and "calmdown denoise only" in res.output
    assert not list(tmp_path.iterdir())


def test_interrupt_keeps_finished_planes_and_resume_skips_them(
    zstack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = calmdown.cli.train
    calls = []

    def train_then_interrupt(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(calmdown.cli, "train", train_then_interrupt)
    out = tmp_path / "out.tif"
    args = ["denoise", str(zstack), "-o", str(out), "--plane", "all", *FAST, "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output
    first = (tmp_path / "out.plane1.tif").read_bytes()
    assert (tmp_path / "out.plane1.calmdown.json").is_file()
    assert not list(tmp_path.glob("out.plane2*")), list(tmp_path.iterdir())
    assert not list(tmp_path.glob("*.partial"))

    monkeypatch.setattr(calmdown.cli, "train", real_train)
    res = runner.invoke(app, [*args[:-1], "--resume"])
    assert res.exit_code == 0, res.output
    assert "Plane 1 of 2: already written" in res.output
    assert (tmp_path / "out.plane1.tif").read_bytes() == first
    with open_movie(tmp_path / "out.plane2.tif") as reader:
        assert reader.shape == SHAPE
