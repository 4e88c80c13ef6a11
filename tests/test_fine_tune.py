"""Fine-tuning from a model of another recording (``init`` / ``--init``)."""

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import calmdown
from calmdown.cli import app
from calmdown.errors import InputError
from calmdown.persist import load_model, save_model
from calmdown.simulate import simulate

FAST = {"max_steps": 20, "time_budget_s": 30, "val_every": 10}


@pytest.fixture(scope="module")
def k2_model():
    """Train a model whose network sees 2 frames on each side (not the default 3)."""
    sim = simulate("dense", photons=2.0, shape=(60, 32, 32), seed=5)
    return calmdown.train(sim.raw, context_frames=2, seed=0, **FAST)


@pytest.fixture(scope="module")
def second_session():
    return simulate("dense", photons=2.0, shape=(60, 32, 32), seed=6).raw


def test_the_network_settings_come_from_the_model_and_the_start_is_recorded(
    k2_model, second_session
):
    model = calmdown.train(second_session, init=k2_model, seed=0, **FAST)
    assert model.config.model.context_frames == 2
    assert model.training["init"].startswith("a model in memory")
    assert model.training["start_val_loss"] is not None
    # Everything fitted on the movie is the new movie's own.
    assert model.data_hash != k2_model.data_hash
    out = calmdown.apply(model, second_session)
    assert out.shape == second_session.shape and np.isfinite(out).all()


def test_a_conflicting_network_setting_is_refused(k2_model, second_session):
    with pytest.raises(InputError, match=r"context_frames=2.*context_frames=3"):
        calmdown.train(second_session, init=k2_model, context_frames=3, **FAST)


def test_init_from_a_file_records_its_path(tmp_path, k2_model, second_session):
    path = save_model(k2_model, tmp_path / "session1.pt")
    denoised = calmdown.denoise(second_session, init=path, seed=0, **FAST)
    assert denoised.shape == second_session.shape
    model = calmdown.train(second_session, init=str(path), seed=0, **FAST)
    assert model.training["init"] == str(path)


def test_cli_train_with_init_says_so_and_saves_a_loadable_model(tmp_path, k2_model):
    raw = tmp_path / "day2.tif"
    tifffile.imwrite(raw, simulate("dense", photons=2.0, shape=(60, 32, 32), seed=7).raw)
    first = save_model(k2_model, tmp_path / "day1.pt")
    out = tmp_path / "day2.pt"
    args = ["train", str(raw), "-o", str(out), "--init", str(first), "--max-steps", "20"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"fine-tuned from {first}" in res.output
    assert load_model(out).config.model.context_frames == 2


def test_cli_init_problems_are_one_line_errors(tmp_path, k2_model):
    raw = tmp_path / "day2.tif"
    tifffile.imwrite(raw, simulate("dense", photons=2.0, shape=(60, 32, 32), seed=7).raw)
    missing = tmp_path / "nope.pt"
    res = CliRunner().invoke(
        app, ["train", str(raw), "-o", str(tmp_path / "m.pt"), "--init", str(missing)]
    )
    assert res.exit_code == 2  # bad input, as for any other
    assert "nope.pt" in res.output and "Traceback" not in res.output
    first = save_model(k2_model, tmp_path / "day1.pt")
    args = ["denoise", str(raw), "-o", str(tmp_path / "d.tif"), "--init", str(first)]
    res = CliRunner().invoke(app, [*args, "--context-frames", "4"])
    assert res.exit_code == 2  # bad input, as for any other
    assert "context_frames=2" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "d.tif").exists()
