import numpy as np
import pytest

import calmdown
from calmdown.io.rois import Rois
from calmdown.samples import ErrorCorrelation, SampleStream
from calmdown.traces import _dff_moments, roi_posterior, roi_traces, write_traces


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


def _shrunk_roi_traces(seed: int, n_rois: int = 12, t: int = 2000):
    """ROI traces whose prior shrinks transients toward baseline and errs slowly, plus raw."""
    rng = np.random.default_rng(seed)
    clean = np.full((n_rois, t), 10.0)
    for i in range(n_rois):
        for start in rng.choice(t - 40, size=15, replace=False):
            clean[i, start : start + 40] += rng.uniform(2, 8) * np.exp(-np.arange(40) / 10.0)
    slow = np.zeros((n_rois, t))
    for k in range(1, t):  # an AR(1) error, correlated over ~20 frames
        slow[:, k] = 0.95 * slow[:, k - 1] + 0.15 * rng.standard_normal(n_rois)
    prior = 10.0 + 0.6 * (clean - 10.0) + slow + 0.5  # shrunk, offset, slowly wrong
    noise_var = np.full((n_rois, t), 1.0)
    raw = clean + rng.standard_normal((n_rois, t))
    return clean, prior, raw, noise_var


def test_roi_posterior_undoes_the_priors_shrinkage_and_is_calibrated():
    clean, prior, raw, nv = _shrunk_roi_traces(0)
    checked = np.ones(clean.shape[1], bool)
    post = roi_posterior(prior, raw, nv, checked, np.ones_like(prior))
    # The line of raw on prior is the line of clean on prior (E[clean | prior]), found
    # without the clean traces; it undoes part of the shrinkage (a slope above 1).
    oracle = np.polyfit(prior.ravel(), clean.ravel(), 1)[0]
    assert np.all(np.abs(post.slope - oracle) < 0.05), (post.slope, oracle)
    assert np.all(post.slope > 1.05)
    rmse = {k: float(np.sqrt(np.mean((v - clean) ** 2))) for k, v in
            (("post", post.mean), ("prior", prior), ("raw", raw))}  # fmt: skip
    assert rmse["post"] < 0.8 * min(rmse["prior"], rmse["raw"]), rmse
    inside = np.abs(clean - post.mean) <= 1.6449 * np.sqrt(post.var)
    assert 0.86 <= inside.mean() <= 0.94, inside.mean()
    # Taking the prior trace as it is, with its own spread, would not be.
    naive = np.abs(clean - prior) <= 1.6449 * np.sqrt(np.mean((prior - clean) ** 2) / 4)
    assert naive.mean() < 0.8


def test_roi_posterior_with_few_frames_keeps_the_slope():
    _, prior, raw, nv = _shrunk_roi_traces(1, t=200)
    checked = np.zeros(200, bool)
    checked[:20] = True
    post = roi_posterior(prior, raw, nv, checked, np.ones_like(prior))
    assert np.all(post.slope == 1.0)
    assert np.all(np.isfinite(post.mean)) and np.all(post.var > 0)


def test_dff_corridors_from_few_samples_cover_and_count_the_baseline():
    """A truth drawn like the samples lies in the dF/F corridor 90 % of the time, with 16 samples.

    Percentiles of 16 draws would cover a new draw about 79 % of the time; a corridor that
    left out the baseline's uncertainty would miss more where the trace is far above it.
    """
    rng = np.random.default_rng(0)
    n, t, s = 40, 400, 16
    mean = np.full((n, t), 20.0)
    mean[:, 100:130] += np.linspace(40.0, 0.0, 30)  # a transient up to 3x the baseline
    sd = 1.0

    def draw(k: int) -> np.ndarray:  # errors: an AR(1) over frames plus a part shared by all
        e = np.empty((k, n, t))
        e[..., 0] = rng.standard_normal((k, n))
        for j in range(1, t):
            e[..., j] = 0.8 * e[..., j - 1] + 0.6 * rng.standard_normal((k, n))
        shared = rng.standard_normal((k, n, 1))
        return mean + sd * (np.sqrt(0.8) * e + np.sqrt(0.2) * shared)

    truth = draw(1)[0]
    samples = draw(s)
    f_var = np.full((n, t), sd**2)  # F's posterior is known exactly; samples give F0's part
    dff, var = _dff_moments(mean, f_var, samples, 50.0)
    true_f0 = np.median(truth, axis=1, keepdims=True)
    true_dff = (truth - true_f0) / true_f0
    inside = np.abs(true_dff - dff) <= 1.6449 * np.sqrt(var)
    assert 0.87 <= inside.mean() <= 0.93, inside.mean()
    peak = slice(100, 110)
    without_f0 = np.abs(true_dff - dff) <= 1.6449 * np.sqrt(f_var) / np.median(mean, axis=1)[0]
    assert inside[:, peak].mean() >= 0.85, inside[:, peak].mean()
    assert without_f0[:, peak].mean() < inside[:, peak].mean() - 0.04
    # Percentiles of the samples' own dF/F: too narrow.
    d_samp = (samples - np.median(samples, axis=2, keepdims=True)) / np.median(
        samples, axis=2, keepdims=True
    )
    lo, hi = np.percentile(d_samp, [5, 95], axis=0)
    assert ((true_dff >= lo) & (true_dff <= hi)).mean() < 0.84


def test_calibrated_roi_traces_are_closer_to_the_truth(small_sim, small_model):
    rois = _label_rois(small_sim.labels)
    clean = small_sim.roi_traces[rois.ids - 1]
    err = {}
    for calibrate in (True, False):
        tr = roi_traces(small_model, small_sim.raw, rois, samples=8, calibrate=calibrate)
        err[calibrate] = float(np.sqrt(np.mean((tr.f_mean - clean) ** 2)))
    assert err[True] < err[False], err


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


def test_the_static_error_is_modelled_rougher_than_the_changing_error_as_the_truth_is(
    small_sim, small_model
):
    # The truth: the denoised movie's standardised error, split into its mean over time
    # (static) and the rest, and each part's correlation between horizontal neighbours.
    chunks = list(calmdown.iter_apply(small_model, small_sim.raw, interval=0.9))
    den = np.concatenate([c.denoised for c in chunks]).astype(np.float64)
    width = np.concatenate([c.upper - c.lower for c in chunks]).astype(np.float64)
    u = (small_sim.clean - den) / np.maximum(width / (2 * 1.6449), 1e-6)
    static = u.mean(axis=0)
    changing = u - static

    def neighbours(a: np.ndarray) -> float:
        return float(np.mean(a[..., 1:] * a[..., :-1]) / np.mean(a**2))

    assert neighbours(static) < neighbours(changing) - 0.2
    corr = small_model.error_correlation
    assert corr.static_spatial is not None
    r = len(corr.spatial) // 2
    assert corr.static_spatial[r][r + 1] < corr.spatial[r][r + 1] - 0.2, corr


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


def test_traces_are_nan_at_blank_frames_and_measured_elsewhere(small_sim, small_model):
    movie = small_sim.raw[:120].astype(np.float32)
    movie[[50, 51, 90]] = 0.0  # dropped frames
    got = roi_traces(small_model, movie, _label_rois(small_sim.labels), samples=8)
    assert got.f_mean.shape[1] == 120
    for a in (got.f_mean, got.f_lower, got.dff_mean, got.dff_upper, got.f_raw):
        assert np.isnan(a[:, [50, 51, 90]]).all()
        assert np.isfinite(np.delete(a, [50, 51, 90], axis=1)).all()
    # The baseline (F0) is the measured frames': dF/F is not pulled by the zero frames.
    cut = roi_traces(
        small_model,
        np.delete(movie, [50, 51, 90], axis=0),
        _label_rois(small_sim.labels),
        samples=8,
    )
    np.testing.assert_allclose(np.delete(got.dff_mean, [50, 51, 90], axis=1), cut.dff_mean)
