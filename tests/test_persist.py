import numpy as np
import pytest
import torch

import calmdown
from calmdown.errors import ModelFileError
from calmdown.persist import load_model, save_model


def test_round_trip_gives_the_same_output(tmp_path, small_sim, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt.partial").exists()
    loaded = load_model(path)
    assert loaded.noise == small_model.noise
    a = calmdown.apply(small_model, small_sim.raw[:30])
    b = calmdown.apply(loaded, small_sim.raw[:30])
    np.testing.assert_array_equal(a, b)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelFileError, match=r"bad\.pt"):
        load_model(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "none.pt")


def test_other_format_version(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 999
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="retrain"):
        load_model(path)


def test_weights_that_do_not_fit_the_network(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if "head" not in k}
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(path)


def test_format_4_file_with_one_guard_null_scale_still_reads(tmp_path, small_sim, small_model):
    # Format 4 had one null scale for the guard's single window; it now serves every window.
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 4
    data["guard_null_scale"] = 1.5
    del data["guard_null_scales"]
    torch.save(data, path)
    loaded = load_model(path)
    assert loaded.guard_null_scales == (1.5,)
    out = calmdown.apply(loaded, small_sim.raw[:30])
    assert out.shape == (30, *small_sim.raw.shape[1:]) and np.isfinite(out).all()


def test_format_7_file_is_applied_without_averaging_its_variance(tmp_path, small_sim, small_model):
    # Format 7 models were calibrated on the frame-by-frame variance; averaging it over frames
    # at inference would not be what their calibration was fitted to.
    assert small_model.config.inference.variance_frames > 1
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 7
    data["config"]["inference"].pop("variance_frames", None)
    torch.save(data, path)
    loaded = load_model(path)
    assert loaded.config.inference.variance_frames == 1
    assert (
        load_model(save_model(small_model, tmp_path / "n.pt")).config.inference.variance_frames > 1
    )


def test_format_8_file_without_clip_bounds_loads_as_unclipped(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    assert "clip_high" in data["noise"]
    data["format_version"] = 8
    for key in ("clip_low", "clip_high"):
        data["noise"].pop(key)
    torch.save(data, path)
    noise = load_model(path).noise
    assert noise.clip_low is None and noise.clip_high is None and not noise.clips


def test_format_9_file_has_no_timing_term_and_narrower_intervals(tmp_path, small_sim, small_model):
    from calmdown.calibration import TIMING_WEIGHT

    assert small_model.final_calibration.timing == TIMING_WEIGHT > 0
    path = save_model(small_model, tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 9
    data["final_calibration"].pop("timing")
    torch.save(data, path)
    old = load_model(path)
    assert old.final_calibration.timing == 0
    raw = small_sim.raw[:40]
    new_chunks = list(calmdown.iter_apply(small_model, raw, interval=0.9))
    old_chunks = list(calmdown.iter_apply(old, raw, interval=0.9))
    width_new = np.concatenate([c.upper - c.lower for c in new_chunks])
    width_old = np.concatenate([c.upper - c.lower for c in old_chunks])
    # The term only adds variance: no interval is narrower with it, and some are wider.
    assert (width_new >= width_old - 1e-3).all()
    assert (width_new > width_old * 1.01).mean() > 0.001


def test_format_10_file_bins_by_the_variance_with_its_timing_term(tmp_path, small_model):
    # Format 10 stages were fitted in bins of a variance that held the timing term; from
    # format 11 they bin by the rest (and scale both).
    assert small_model.final_calibration.timing_binned is False
    path = save_model(small_model, tmp_path / "m.pt")
    assert load_model(path).final_calibration.timing_binned is False
    data = torch.load(path, weights_only=True)
    data["format_version"] = 10
    data["final_calibration"].pop("timing_binned")
    torch.save(data, path)
    old = load_model(path)
    assert old.final_calibration.timing_binned is True
    assert old.final_calibration.timing == small_model.final_calibration.timing


def test_departure_variance_round_trips_and_format_11_files_have_none(
    tmp_path, small_sim, small_model
):
    # A model trained now fits the departure's variance (its slopes are not all 1 on a
    # movie at 1.5 photons) and keeps it through a file; a format 11 file has none.
    assert not small_model.departure.is_identity
    path = save_model(small_model, tmp_path / "m.pt")
    assert load_model(path).departure == small_model.departure
    data = torch.load(path, weights_only=True)
    data["format_version"] = 11
    data.pop("departure")
    torch.save(data, path)
    old = load_model(path)
    assert old.departure.is_identity
    raw = small_sim.raw[:30]
    a = np.concatenate([c.denoised for c in calmdown.iter_apply(small_model, raw)])
    b = np.concatenate([c.denoised for c in calmdown.iter_apply(old, raw)])
    assert not np.array_equal(a, b)
