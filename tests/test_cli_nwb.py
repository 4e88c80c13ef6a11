"""``calmdown denoise in.nwb -o out.nwb``: a copy of the file with the denoised series added."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.simulate import simulate

pynwb = pytest.importorskip("pynwb", reason="NWB support is the optional extra calmdown[nwb]")

from tests.io.test_nwb import write_nwb  # noqa: E402 -- needs pynwb, checked above

runner = CliRunner()
FAST = ["--max-steps", "5", "--time-budget", "30", "-q"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_series(path: Path) -> dict[str, np.ndarray]:
    """Every TwoPhotonSeries of an NWB file (``name`` or ``module/name``) as an array."""
    out = {}
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        for name, obj in nwb.acquisition.items():
            out[name] = np.asarray(obj.data[:])
        for module_name, module in nwb.processing.items():
            for name, obj in module.data_interfaces.items():
                out[f"{module_name}/{name}"] = np.asarray(obj.data[:])
    return out


def test_denoise_nwb_to_nwb(tmp_path: Path) -> None:
    # (frames, x, y) as the NWB schema lays them out
    raw = simulate("dense", photons=2.0, shape=(60, 32, 24), seed=0).raw.astype("uint16")
    data = raw.transpose(0, 2, 1)
    src = write_nwb(tmp_path / "in.nwb", {"TwoPhotonSeries": data})
    before = sha256(src)
    out = tmp_path / "out.nwb"
    res = runner.invoke(app, ["denoise", str(src), "-o", str(out), "--interval", "0.9", *FAST])
    assert res.exit_code == 0, res.output
    assert sha256(src) == before, "the input NWB file changed"
    series = read_series(out)
    np.testing.assert_array_equal(series["TwoPhotonSeries"], data)
    denoised = series["ophys/TwoPhotonSeries_denoised"]
    assert denoised.shape == data.shape and denoised.dtype == np.float32
    assert np.isfinite(denoised).all() and not np.array_equal(denoised, data)
    for extra in ("out.lower.nwb", "out.upper.nwb", "out.model.pt", "out.calmdown.json"):
        assert (tmp_path / extra).is_file(), extra
    assert json.loads((tmp_path / "out.calmdown.json").read_text())["output"] == str(out)
    assert not list(tmp_path.glob("*.partial"))


def test_denoise_every_plane_of_a_volume_to_nwb(tmp_path: Path) -> None:
    planes = [
        simulate("dense", photons=2.0, shape=(60, 24, 32), seed=s).raw.astype("uint16")
        for s in (0, 1)
    ]
    data = np.stack(planes, axis=-1)  # (frames, x, y, z)
    src = write_nwb(tmp_path / "vol.nwb", {"volume": data})
    before = sha256(src)
    out = tmp_path / "out.nwb"
    res = runner.invoke(app, ["denoise", str(src), "-o", str(out), "--plane", "all", *FAST])
    assert res.exit_code == 0, res.output
    assert sha256(src) == before
    for n in (1, 2):
        series = read_series(tmp_path / f"out.plane{n}.nwb")
        np.testing.assert_array_equal(series["volume"], data)
        assert series["ophys/volume_denoised"].shape == data.shape[:3]
        assert (tmp_path / f"out.plane{n}.model.pt").is_file()
