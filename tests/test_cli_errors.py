"""Bad input through the command line: one line naming the file, the problem and the fix.

Each case checks the exit status (2 for the user's errors), that no traceback is shown, and
that nothing is left under the output's final name (nor a ``.partial``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.simulate import simulate
from tests.io.test_scanimage import make, write_si

runner = CliRunner()
FAST = ["--max-steps", "3", "--time-budget", "2", "--threads", "1"]


def movie(frames: int = 24, size: int = 16) -> np.ndarray:
    return simulate("dense", photons=2.0, shape=(frames, size, size), seed=0).raw


def run(args: list[str]) -> tuple[int, str]:
    """Invoke the CLI with warnings shown as a user sees them (not raised, as pytest is set to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = runner.invoke(app, args)
    return result.exit_code, result.output


def assert_refused(code: int, output: str, out: Path, *words: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()
    assert not list(out.parent.glob("*.partial"))


def truncated(path: Path) -> None:
    tifffile.imwrite(path, movie().astype(np.uint16), photometric="minisblack")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def corrupt(path: Path) -> None:
    path.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(3000))


def with_nan(path: Path) -> None:
    data = movie().astype(np.float32)
    data[5, 2, 3] = np.nan
    data[5, 4, 4] = np.inf
    tifffile.imwrite(path, data)


CASES: dict[str, tuple[Callable[[Path], object], str, tuple[str, ...]]] = {
    "truncated TIFF": (truncated, "in.tif", ("truncated", "copy")),
    "corrupt TIFF": (corrupt, "in.tif", ("corrupt", "copied completely")),
    "2-D image": (
        lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint16)),
        "in.tif",
        ("single 2-D image", "(32, 32)", "time series"),
    ),
    "4-D array, no time axis": (
        lambda p: np.save(p, np.zeros((10, 3, 16, 16), np.uint16)),
        "in.npy",
        ("4-D", "(10, 3, 16, 16)", "T, Y, X", "single channel"),
    ),
    "4-D TIFF with channels": (
        lambda p: tifffile.imwrite(
            p, np.zeros((10, 2, 16, 16), np.uint16), metadata={"axes": "TCYX"}
        ),
        "in.tif",
        ("TCYX", "--channel 1 to 2"),
    ),
    "4 frames": (
        lambda p: tifffile.imwrite(p, movie()[:4].astype(np.uint16), photometric="minisblack"),
        "in.tif",
        ("4 frames", "at least", "--context-frames"),
    ),
    "NaN and Inf": (with_nan, "in.tif", ("2 NaN or infinite values", "frame 5", "replace")),
    "constant movie": (
        lambda p: tifffile.imwrite(p, np.full((24, 16, 16), 100, np.uint16)),
        "in.tif",
        ("does not change over time",),
    ),
    "missing file": (lambda p: None, "in.tif", ("no such file", "check the path")),
    "unknown extension": (
        lambda p: p.write_bytes(b"RIFF"),
        "in.avi",
        ("unknown extension '.avi'", "convert"),
    ),
    "a model given as the movie": (
        lambda p: p.write_bytes(b"PK"),
        "den.model.pt",
        ("is a calmdown model", "not a movie", "--model", "calmdown apply"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_movie_is_refused(tmp_path: Path, case: str) -> None:
    make_input, name, words = CASES[case]
    src = tmp_path / name
    make_input(src)
    out = tmp_path / "out.tif"
    code, output = run(["denoise", str(src), "-o", str(out), *FAST])
    assert_refused(code, output, out, name, *words)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-errors") / "raw.tif"
    tifffile.imwrite(path, movie().astype(np.uint16))
    return path


def test_output_equal_to_input(raw: Path) -> None:
    before = raw.read_bytes()
    code, output = run(["denoise", str(raw), "-o", str(raw), *FAST])
    assert code == 2 and "Traceback" not in output
    assert "raw.tif" in output and "overwritten" in output and "-o" in output
    assert raw.read_bytes() == before


@pytest.mark.parametrize("where", ["missing folder", "unwritable folder"])
def test_unwritable_output_is_refused_before_training(
    tmp_path: Path, raw: Path, where: str
) -> None:
    if where == "missing folder":
        out = tmp_path / "nope" / "out.tif"
        words: tuple[str, ...] = ("does not exist", "create it")
    else:
        out = Path("/sys/calmdown-test-out.tif")  # refuses writes even to root
        if not Path("/sys").is_dir():
            pytest.skip("no /sys here")
        words = ("cannot write in the folder /sys", "writable")
    code, output = run(["denoise", str(raw), "-o", str(out), *FAST])
    assert_refused(code, output, out, "out.tif", *words)
    assert "training" not in output


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Train on z-scored float data (negative values, no offset): handled with a warning."""
    folder = tmp_path_factory.mktemp("float")
    data = movie().astype(np.float32)
    path = folder / "zscored.tif"
    tifffile.imwrite(path, (data - data.mean()) / data.std())
    model = folder / "m.pt"
    code, output = run(["train", str(path), "-o", str(model), "--context-frames", "1", *FAST])
    assert code == 0, output
    return model, output


def test_negative_float_data_is_handled(float_model: tuple[Path, str]) -> None:
    model, output = float_model
    assert model.is_file()
    assert "offset -" in output  # a negative zero-light level, estimated
    assert "--gain" in output  # the warning says how to pin the scale down


def test_apply_picks_scanimage_channel_and_plane(tmp_path: Path, float_model) -> None:
    model, _ = float_model
    src = write_si(tmp_path / "si.tif", make(2, 2, 2), [1, 2])
    out = tmp_path / "out.tif"
    code, output = run(["apply", str(model), str(src), "-o", str(out), "-q"])
    assert_refused(code, output, out, "si.tif", "--channel 1 or 2", "--plane")
    code, output = run(
        ["apply", str(model), str(src), "-o", str(out), "--channel", "2", "--plane", "2"]
    )
    assert_refused(code, output, out, "si.tif", "2 frames")  # the choice went through
    code, output = run(["apply", str(model), str(src), "-o", str(out), "--channel", "5"])
    assert_refused(code, output, out, "has no channel 5")


@pytest.mark.parametrize("command", ["denoise", "train"])
def test_channel_and_plane_reach_the_reader(tmp_path: Path, command: str) -> None:
    src = write_si(tmp_path / "si.tif", make(4, 3, 2), [1, 2])
    out = tmp_path / ("out.tif" if command == "denoise" else "m.pt")
    code, output = run([command, str(src), "-o", str(out), "--channel", "1", *FAST])
    assert_refused(code, output, out, "si.tif", "3 planes", "--plane 1 to 3")
    code, output = run([command, str(src), "-o", str(out), "--channel", "1", "--plane", "3", *FAST])
    assert_refused(code, output, out, "si.tif", "4 frames")  # read: 4 frames of plane 3
    npy = tmp_path / "m.npy"
    np.save(npy, movie())
    code, output = run([command, str(npy), "-o", str(out), "--channel", "1", *FAST])
    assert_refused(code, output, out, "m.npy", "--channel 1 does not apply", "leave --channel out")


def test_corrupt_and_foreign_version_model_files(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "out.tif"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model file at all")
    code, output = run(["apply", str(junk), str(raw), "-o", str(out)])
    assert_refused(code, output, out, "junk.pt", "corrupt", "retrain")
    old = tmp_path / "old.pt"
    torch.save({"format": "calmdown-model", "format_version": 1, "calmdown_version": "0.0.1"}, old)
    code, output = run(["apply", str(old), str(raw), "-o", str(out)])
    assert_refused(code, output, out, "old.pt", "format 1", "retrain")
    code, output = run(["apply", str(tmp_path / "none.pt"), str(raw), "-o", str(out)])
    assert_refused(code, output, out, "none.pt", "no such model file")


def test_samples_with_the_prior_alone_is_refused_before_training(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "o.tif"
    res = runner.invoke(
        app, ["denoise", str(raw), "-o", str(out), "--output", "prior", "--samples", "2", "-q"]
    )
    assert res.exit_code != 0
    assert "--samples" in res.output and "--output prior" in res.output
    assert "Traceback" not in res.output
    assert not list(tmp_path.glob("o*"))


@pytest.mark.parametrize("command", ["denoise", "train"])
def test_emulated_bfloat16_is_refused_before_the_movie_is_read(
    tmp_path: Path, raw: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from calmdown import device as device_module

    monkeypatch.setattr(device_module, "native_bfloat16", lambda device: False)
    out = tmp_path / ("o.tif" if command == "denoise" else "m.pt")
    code, output = run([command, str(raw), "-o", str(out), "--precision", "bfloat16", *FAST])
    assert_refused(code, output, out, "no native bfloat16", "--precision auto or float32")
    # Not read: a file that is no movie at all gets the same answer.
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff")
    code, output = run([command, str(junk), "-o", str(out), "--precision", "bfloat16", *FAST])
    assert_refused(code, output, out, "no native bfloat16")


def test_an_unknown_precision_is_refused(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "m.pt"
    code, output = run(["train", str(raw), "-o", str(out), "--precision", "fp16", *FAST])
    assert_refused(code, output, out, "precision", "fp16")
