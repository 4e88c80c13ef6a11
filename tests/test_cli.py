import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from calmdown.cli import app
from calmdown.io import open_movie
from calmdown.persist import load_model
from calmdown.simulate import simulate

runner = CliRunner()
FAST = ["--max-steps", "20", "--time-budget", "30", "-q"]


@pytest.fixture(scope="module")
def raw_tif(tmp_path_factory):
    sim = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)
    path = tmp_path_factory.mktemp("cli") / "raw.tif"
    tifffile.imwrite(path, sim.raw.astype(np.uint16))
    return path


def test_denoise_writes_float32_of_the_same_shape(tmp_path, raw_tif):
    before = raw_tif.read_bytes()
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["denoise", str(raw_tif), "-o", str(out), "--interval", "0.9", *FAST])
    assert res.exit_code == 0, res.output
    with open_movie(out) as r:
        assert r.shape == (60, 32, 32) and r.dtype == np.float32
    for extra in ("out.lower.tif", "out.upper.tif", "out.model.pt", "out.calmdown.json"):
        assert (tmp_path / extra).is_file(), extra
    meta = json.loads((tmp_path / "out.calmdown.json").read_text())
    assert meta["noise_model"]["gain"] > 0
    assert raw_tif.read_bytes() == before, "the input file changed"
    assert not list(tmp_path.glob("*.partial"))


def test_samples_are_written_and_match_the_intervals(tmp_path, raw_tif):
    out = tmp_path / "out.tif"
    args = ["denoise", str(raw_tif), "-o", str(out), "--interval", "0.9", "--samples", "8"]
    res = runner.invoke(app, [*args, *FAST])
    assert res.exit_code == 0, res.output
    draws = np.stack([tifffile.imread(tmp_path / f"out.sample{j}.tif") for j in range(1, 9)])
    lower, upper = (tifffile.imread(tmp_path / f"out.{b}.tif") for b in ("lower", "upper"))
    assert draws.shape == (8, 60, 32, 32)
    assert not np.array_equal(draws[0], draws[1])
    # Each sample is a draw from the same marginal posterior the intervals summarise.
    inside = np.mean((draws >= lower) & (draws <= upper))
    assert 0.85 <= inside <= 0.95, inside


def test_summary_paragraph(tmp_path, raw_tif):
    res = runner.invoke(
        app, ["denoise", str(raw_tif), "-o", str(tmp_path / "o.h5"), "--max-steps", "10"]
    )
    assert res.exit_code == 0, res.output
    for word in (
        "gain",
        "offset",
        "read noise",
        "photons per pixel per frame",
        "Training",
        "held-out loss",
        "Model saved to",
        "frames/s",
    ):
        assert word in res.output


def test_summary_says_when_training_diverged(small_model):
    import dataclasses

    from calmdown.cli import _summary

    kw = {"out": None, "model_path": None, "infer_seconds": None, "n_frames": None, "shape": None}
    assert "diverged" not in _summary(small_model, **kw)
    diverged = dataclasses.replace(small_model, training={**small_model.training, "recoveries": 2})
    assert "diverged 2 time(s)" in _summary(diverged, **kw)


def test_summary_says_how_well_the_frames_check_the_widths(small_model):
    from calmdown.cli import _pct, _summary

    kw = {"out": None, "model_path": None, "infer_seconds": None, "n_frames": None, "shape": None}
    h = small_model.heldout
    # The pooled factor is measured no worse than the worst brightness row's.
    assert 0 < h["scale_se"] <= max(h["row_scale_se"])
    assert 0 < h["prior_error_share"] < 1
    text = _summary(small_model, **kw)
    assert f"+-{_pct(h['scale_se'])} % overall" in text


def test_small_percentages_keep_their_digits():
    from calmdown.cli import _pct

    # A scale measured to 0.4 % must not read "+-0 %".
    assert _pct(0.004) == "0.4"
    assert _pct(0.0123) == "1.2"
    assert _pct(0.25) == "25"


def test_train_then_apply(tmp_path, raw_tif):
    model = tmp_path / "m.pt"
    res = runner.invoke(app, ["train", str(raw_tif), "-o", str(model), *FAST])
    assert res.exit_code == 0, res.output
    out = tmp_path / "den.zarr"
    args = ["apply", str(model), str(raw_tif), "-o", str(out), "--interval", "0.8"]
    res = runner.invoke(app, [*args, "--samples", "3"])
    assert res.exit_code == 0, res.output
    with open_movie(out) as r:
        assert r.shape == (60, 32, 32)
    # The closing line names every movie written, and nothing that is not there.
    said = res.output[res.output.rindex("Denoised ") :]
    assert "80 % credible interval" in said and "3 joint samples" in said, said
    for name in ("den.zarr", "den.lower.zarr", "den.upper.zarr", "den.sample1.zarr"):
        assert name in said and (tmp_path / name).exists(), name
    assert "den.sample3.zarr" in said and (tmp_path / "den.sample3.zarr").exists()
    assert not (tmp_path / "den.sample4.zarr").exists()


def test_width_sets_the_network_and_a_conflicting_init_is_refused(tmp_path, raw_tif):
    narrow, wide = tmp_path / "narrow.pt", tmp_path / "wide.pt"
    for path, extra in ((narrow, ["--width", "8"]), (wide, [])):
        res = runner.invoke(app, ["train", str(raw_tif), "-o", str(path), *FAST, *extra])
        assert res.exit_code == 0, res.output
    models = [load_model(p) for p in (narrow, wide)]
    assert [m.config.model.width for m in models] == [8, 32]
    sizes = [sum(t.numel() for t in m.state_dict.values()) for m in models]
    assert sizes[0] < sizes[1] / 8  # weights grow with the square of the width
    # Fine-tuning takes the given model's network: another width is refused before training.
    out = tmp_path / "d.tif"
    args = ["denoise", str(raw_tif), "-o", str(out), "--init", str(narrow), "--width", "32"]
    res = runner.invoke(app, [*args, *FAST])
    assert res.exit_code == 2 and "width=8" in res.output and "width=32" in res.output
    assert not out.exists()


def test_simulate_command(tmp_path):
    res = runner.invoke(
        app, ["simulate", "-o", str(tmp_path / "sim"), "--frames", "40", "--size", "32"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sim" / "raw.tif").is_file() and (tmp_path / "sim" / "clean.tif").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: tifffile.imwrite(p, np.zeros((32, 32), np.uint16)), "2-D"),
        (
            lambda p: tifffile.imwrite(
                p, np.ones((4, 32, 32), np.uint16), photometric="minisblack"
            ),
            "frames",
        ),
    ],
)
def test_bad_input_one_line_no_traceback_no_output(tmp_path, make, message):
    src = tmp_path / "in.tif"
    make(src)
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["denoise", str(src), "-o", str(out), *FAST])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert message in res.output and "in.tif" in res.output
    assert not out.exists()


def test_output_equal_to_input_is_refused(raw_tif):
    before = raw_tif.read_bytes()
    res = runner.invoke(app, ["denoise", str(raw_tif), "-o", str(raw_tif), *FAST])
    assert res.exit_code == 2 and "overwrit" in res.output
    assert raw_tif.read_bytes() == before


def test_dtype_input_stores_the_raw_integer_type(tmp_path, raw_tif):
    model = tmp_path / "m.pt"
    assert runner.invoke(app, ["train", str(raw_tif), "-o", str(model), *FAST]).exit_code == 0
    args = ["apply", str(model), str(raw_tif), "--interval", "0.9", "--samples", "1"]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "f.tif"), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "i.tif"), "--dtype", "input"])
    assert res.exit_code == 0, res.output
    assert "uint16, rounded to whole ADU, interval ends outward" in res.output
    for name, rounded in (
        ("", np.rint),
        (".lower", np.floor),
        (".upper", np.ceil),
        (".sample1", np.rint),
    ):
        f, i = (tifffile.imread(tmp_path / f"{s}{name}.tif") for s in "fi")
        assert i.dtype == np.uint16 and f.dtype == np.float32, name
        np.testing.assert_array_equal(i, np.clip(rounded(f), 0, 65535), err_msg=name)
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "x.tif"), "--dtype", "float64"])
    assert res.exit_code != 0 and "--dtype must be one of" in res.output
    assert not (tmp_path / "x.tif").exists()


def test_summary_flags_whole_adu_rounding_where_the_noise_is_a_few_adu(tmp_path):
    from calmdown.cli import _outputs_written
    from calmdown.noise import NoiseModel

    out = tmp_path / "d.tif"
    counting = NoiseModel(gain=1.0, offset=0.0, read_noise=1.0, photons_per_pixel=2.0)
    pmt = NoiseModel(gain=500.0, offset=100.0, read_noise=10.0, photons_per_pixel=0.5)
    said = _outputs_written(out, 0.9, 0, np.dtype("uint16"), counting)
    assert "noise is 1.73 ADU" in said and "--dtype float32" in said
    assert "--dtype float32" not in _outputs_written(out, 0.9, 0, np.dtype("uint16"), pmt)
    assert "--dtype float32" not in _outputs_written(out, 0.9, 0, np.dtype("float32"), counting)


def test_blank_frames_are_skipped_named_and_passed_through(tmp_path):
    movie = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0).raw.astype(np.uint16)
    movie[[0, 30, 31]] = 0  # a late shutter and two dropped frames
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, movie)
    out = tmp_path / "out.tif"
    res = runner.invoke(
        app, ["denoise", str(raw), "-o", str(out), "--interval", "0.9", "--max-steps", "20"]
    )
    assert res.exit_code == 0, res.output
    assert "3 blank frames (0, 30-31: one value in every pixel)" in " ".join(res.output.split())
    for name in ("out.tif", "out.lower.tif", "out.upper.tif"):
        got = tifffile.imread(tmp_path / name)
        assert got.shape == (60, 32, 32), name
        assert (got[[0, 30, 31]] == 0).all() and (got[1:30] > 0).all(), name
    meta = json.loads((tmp_path / "out.calmdown.json").read_text())
    assert meta["blank_frames"] == {"frames": [0, 30, 31], "values": [0.0, 0.0, 0.0]}
