"""``--roi``: one region of a ScanImage multi-ROI recording, through the command line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.io import open_movie
from calmdown.simulate import simulate
from tests.io.test_scanimage import write_mroi

runner = CliRunner()
FAST = ["--max-steps", "3", "--time-budget", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def mroi_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ROIs, 24 x 20 and 16 x 12 (width x height), 3 fly-to lines, one channel."""
    raw = simulate("dense", photons=2.0, shape=(24, 32, 24), seed=0).raw.astype("int32")
    rois = [raw[:, None, None, :20, :], raw[:, None, None, 20:, :16]]
    path = tmp_path_factory.mktemp("mroi") / "mroi.tif"
    return write_mroi(path, rois, [1], flyto=3)


def run(args: list[str]) -> tuple[int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_denoise_one_roi(tmp_path: Path, mroi_tif: Path) -> None:
    out = tmp_path / "roi2.tif"
    code, output = run(["denoise", str(mroi_tif), "--roi", "2", "-o", str(out), *FAST])
    assert code == 0, output
    assert "ROI 2 of 2" in output
    with open_movie(out) as reader:
        assert reader.shape == (24, 12, 16)


def test_missing_roi_lists_them(tmp_path: Path, mroi_tif: Path) -> None:
    out = tmp_path / "m.pt"
    code, output = run(["train", str(mroi_tif), "-o", str(out), *FAST])
    assert code == 2, output
    assert "Traceback" not in output
    assert "2 ROIs" in output and "--roi 1 or 2" in output and "(16 x 12 pixels)" in output
    assert not out.exists()
