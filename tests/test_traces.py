import numpy as np
import pytest

import calmdown
from calmdown.io.rois import Rois
from calmdown.samples import ErrorCorrelation, SampleStream
from calmdown.traces import roi_traces, write_traces


def _label_rois(labels: np.ndarray) -> Rois:
    ids = np.unique(labels[labels > 0])
    masks = []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        masks.append((ys, xs, np.ones(len(ys), np.float32)))
    return Rois(ids=ids, masks=masks, shape=labels.shape)


def test_sample_fields_have_the_asked_correlation():
    d = np.arange(-4, 5)
    rho = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / 4.0)  # a valid (Gaussian) correlation
    corr = ErrorCorrelation(spatial=rho.tolist(), static=0.3, decay=0.6)
    import torch

    stream = SampleStream(corr, 4, (64, 64), seed=0, device=torch.device("cpu"))
    u = torch.cat([stream.frames(0, 100), stream.frames(100, 400)], dim=1).numpy()
    assert abs(u.var() - 1.0) < 0.1
    lag1_x = np.mean(u[..., 1:] * u[..., :-1])
    assert abs(lag1_x - np.exp(-0.25)) < 0.08
    # rho_t(L) = s + (1 - s) a^L: lag 1 -> 0.72, lag 20 -> 0.3 (the static part).
    assert abs(np.mean(u[:, 1:] * u[:, :-1]) - 0.72) < 0.1
    assert abs(np.mean(u[:, 20:] * u[:, :-20]) - 0.3) < 0.15
    # Chunking does not change the draws.
    again = SampleStream(corr, 4, (64, 64), seed=0, device=torch.device("cpu")).frames(0, 400)
    np.testing.assert_allclose(again.numpy(), u, atol=1e-5)


def test_roi_corridors_cover_the_clean_traces(small_sim, small_model, tmp_path):
    rois = _label_rois(small_sim.labels)
    tr = roi_traces(small_model, small_sim.raw, rois, samples=16, level=0.9)
    n, t = len(rois.ids), small_sim.raw.shape[0]
    assert tr.f_mean.shape == tr.f_lower.shape == tr.dff_upper.shape == (n, t)
    clean = small_sim.roi_traces[rois.ids - 1]
    inside = (clean >= tr.f_lower) & (clean <= tr.f_upper)
    assert 0.8 <= inside.mean() <= 0.99, inside.mean()
    files = write_traces(tr, tmp_path / "traces")
    assert [f.suffix for f in files] == [".npz", ".csv", ".png"]
    with np.load(files[0]) as data:
        for key in ("f_mean", "f_lower", "f_upper", "dff_mean", "dff_lower", "dff_upper"):
            assert data[key].shape == (n, t)
        np.testing.assert_array_equal(data["roi_ids"], rois.ids)
    assert not list(tmp_path.glob("*.partial"))


def test_correlated_samples_give_wider_roi_corridors_than_independent_ones(small_sim, small_model):
    import dataclasses

    rois = _label_rois(small_sim.labels)
    clean = small_sim.roi_traces[rois.ids - 1]
    indep = dataclasses.replace(small_model, error_correlation=ErrorCorrelation.independent())
    cov = {}
    for name, model in (("joint", small_model), ("independent", indep)):
        tr = roi_traces(model, small_sim.raw, rois, samples=16, calibrate=False)
        cov[name] = ((clean >= tr.f_lower) & (clean <= tr.f_upper)).mean()
    assert cov["independent"] < cov["joint"] - 0.1, cov


def test_rois_of_another_shape_are_refused(small_sim, small_model):
    rois = _label_rois(np.pad(small_sim.labels, 2))
    with pytest.raises(calmdown.InputError, match="ROIs lie on"):
        roi_traces(small_model, small_sim.raw[:40], rois, samples=4)


def test_traces_command_writes_npz_csv_and_png(small_sim, tmp_path):
    from typer.testing import CliRunner

    from calmdown.cli import app

    raw = tmp_path / "raw.npy"
    np.save(raw, small_sim.raw[:60])
    labels = tmp_path / "labels.npy"
    np.save(labels, small_sim.labels)
    result = CliRunner().invoke(
        app,
        [
            "traces",
            str(raw),
            "--rois",
            str(labels),
            "-o",
            str(tmp_path / "tr"),
            "--max-steps",
            "5",
            "--samples",
            "4",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    for ext in (".npz", ".csv", ".png"):
        assert (tmp_path / f"tr{ext}").is_file()
    with np.load(tmp_path / "tr.npz") as data:
        assert data["dff_lower"].shape == (len(np.unique(small_sim.labels)) - 1, 60)
