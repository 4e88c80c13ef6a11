"""The HTML review report: content, self-containment, the CLI, and rendering in a real browser."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import calmdown
from calmdown.cli import app
from calmdown.errors import InputError
from calmdown.io import save_array
from calmdown.persist import save_model
from calmdown.report import build_report, make_report, write_report

FAST = {
    "time_budget_s": 8,
    "max_steps": 20,
    "val_every": 10,
    "width": 8,
    "batch_size": 4,
    "patch_size": 32,
    "threads": 1,
    "device": "cpu",
    "seed": 0,
}
SECTIONS = (
    "movie",
    "mean-images",
    "noise-model",
    "calibration",
    "hallucination",
    "wobble",
    "residuals",
    "surprise",
)
CHROMIUM = os.environ.get("CALMDOWN_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def sim():
    return calmdown.simulate("sparse", photons=2.0, shape=(120, 40, 40), seed=0, n_events=3)


@pytest.fixture(scope="module")
def model(sim):
    return calmdown.train(sim.raw, **FAST)


@pytest.fixture(scope="module")
def report_path(sim, model, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    raw_before = sim.raw.copy()
    out = write_report(sim.raw, path, model=model, movie_frames=30, threads=1, device="cpu")
    np.testing.assert_array_equal(sim.raw, raw_before)
    assert out == path
    return path


def test_report_has_every_section(report_path):
    text = report_path.read_text(encoding="utf-8")
    for ident in SECTIONS:
        assert f'<section id="{ident}">' in text, ident
    for words in (
        "Wobble score",
        "photon",
        "PIT",
        "Hallucination check",
        "moving average (5 frames)",
        "90 % interval width",
        "autocorrelation",
        "scale of the interval widths measured to",
    ):
        assert words in text, words
    assert re.search(r"(PASS|CAUTION|FAIL|too few)", text)
    assert not (report_path.parent / "report.html.partial").exists()


def test_report_states_the_joint_samples_error_model(report_path, model):
    text = report_path.read_text(encoding="utf-8")
    corr = model.error_correlation
    assert "static over time" in text
    assert f"{corr.static:.3g}" in text
    assert f"{corr.decay:.3g}" in text


def test_report_is_self_contained(report_path):
    text = report_path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)
    sources = re.findall(r'\s(?:src|href)="([^"#][^"]*)"', text)
    assert sources, "no embedded images found"
    assert all(s.startswith("data:") for s in sources), [s[:40] for s in sources]
    assert 'src="data:image/webp;base64,' in text  # the movie
    assert report_path.stat().st_size < 20e6


def test_report_trains_a_model_when_none_is_given():
    sim = calmdown.simulate("sparse", photons=2.0, shape=(60, 32, 32), seed=1, n_events=0)
    page = build_report(sim.raw, movie_frames=10, **{**FAST, "max_steps": 5})
    assert page.startswith("<!DOCTYPE html>")
    assert "training steps" in page


def test_report_draws_roi_traces_with_corridors(sim, model, tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, sim.labels)
    page = build_report(sim.raw, model=model, rois=labels, movie_frames=10)
    assert "ROI dF/F traces with credible corridors" in page
    assert "joint posterior samples" in page


def test_rois_that_do_not_fit_fail_with_a_clear_message(sim, model, tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.pad(sim.labels, 3))
    with pytest.raises(InputError, match=r"labels\.npy"):
        build_report(sim.raw, model=model, rois=labels)


def test_cli_report_flags_a_hallucinating_denoiser(sim, model, tmp_path):
    """--denoised reviews another denoiser's output: smooth moving blobs must fail the check."""
    raw_path = save_array(tmp_path / "raw.tif", sim.raw)
    model_path = save_model(model, tmp_path / "model.pt")
    rng = np.random.default_rng(3)
    n_t, h, w = sim.raw.shape
    yy, xx = np.mgrid[:h, :w]
    sd = float(np.std(sim.raw - sim.clean))
    fake = sim.clean.copy()
    for _ in range(8):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        vy, vx = rng.normal(0, 1.0, 2)
        for t in range(n_t):
            cy, cx = (y + vy * t) % h, (x + vx * t) % w
            fake[t] += 1.5 * sd * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
    fake_path = save_array(tmp_path / "fake.tif", fake.astype(np.float32))
    out = tmp_path / "fake-report.html"
    result = CliRunner().invoke(
        app,
        [
            "report",
            str(raw_path),
            "-o",
            str(out),
            "--model",
            str(model_path),
            "--denoised",
            str(fake_path),
            "--movie-frames",
            "20",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "FAIL" in text
    assert "fake.tif" in text


def test_cli_report_with_missing_rois_names_the_file(sim, tmp_path):
    raw_path = save_array(tmp_path / "raw.tif", sim.raw[:40])
    result = CliRunner().invoke(
        app, ["report", str(raw_path), "-o", str(tmp_path / "r.html"), "--rois", "x.zip"]
    )
    assert result.exit_code == 2
    assert "x.zip" in result.output
    assert not (tmp_path / "r.html").exists()


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright); browser check skipped")
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CALMDOWN_CHROMIUM); "
            "browser check skipped"
        )
    return sync_playwright


def render(html_path: Path, screenshot: Path, *, full_page: bool = True) -> dict:
    """Open a report in headless Chromium; return console errors and image sizes."""
    sync_playwright = _playwright()
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            page.screenshot(path=str(screenshot), full_page=full_page)
        finally:
            browser.close()
    return {"errors": errors, "images": images}


def test_report_renders_in_chromium(report_path, tmp_path):
    shot = tmp_path / "screenshot.png"
    result = render(report_path, shot)
    assert result["errors"] == []
    images = result["images"]
    assert len(images) >= 8
    assert all(complete and width > 0 for _, complete, width in images), images
    assert any(alt == "side-by-side movie" for alt, _, _ in images)
    assert shot.stat().st_size > 10_000


def test_streamed_statistics_do_not_depend_on_chunking():
    from calmdown.report.diagnostics import ResidualStats, TemporalStats

    rng = np.random.default_rng(0)
    raw = rng.poisson(3.0, (90, 20, 24)).astype(np.float32)
    den = np.full_like(raw, 3.0) + 0.1 * raw
    nvar = np.full_like(raw, 3.0)
    results = []
    for step in (90, 7, 32):
        ts, rs = TemporalStats((20, 24)), ResidualStats()
        for s in range(0, 90, step):
            ts.add(raw[s : s + step], den[s : s + step])
            rs.add(raw[s : s + step], den[s : s + step], nvar[s : s + step])
        results.append((ts.finish(), rs.finish()))
    (t0, r0), *others = results
    for t, r in others:
        for name in ("var_raw", "var_den_s", "noise_raw", "wobble_den", "wobble_ma"):
            np.testing.assert_allclose(getattr(t, name), getattr(t0, name), rtol=1e-5)
        np.testing.assert_allclose(r["time"], r0["time"], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(r["x"], r0["x"], rtol=1e-5, atol=1e-9)
    # Poisson noise: white in time and space, variance ratio 1 against the frame differences.
    assert max(abs(v) for v in r0["time"] + r0["y"] + r0["x"]) < 4 * r0["band"]
    np.testing.assert_allclose(np.median(t0.var_raw / t0.noise_raw), 1.0, atol=0.1)


def test_event_finder_sees_a_region_across_chunks_once():
    from calmdown.report.diagnostics import EventFinder

    shape = (200, 30, 30)
    p = np.zeros(shape, np.float32)
    p[95:110, 10:13, 20:23] = 0.9  # straddles the chunk boundary at 100
    raw = np.full(shape, 10.0, np.float32)
    raw[95:110, 10:13, 20:23] += 5.0
    prior = np.full(shape, 10.0, np.float32)
    finder = EventFinder((30, 30), lookahead=32)
    for s in range(0, 200, 50):
        sl = slice(s, s + 50)
        finder.add(
            s,
            p_surprise=p[sl],
            raw=raw[sl],
            denoised=raw[sl],
            prior=prior[sl],
            noise_sd=np.ones_like(raw[sl]),
            gain=1.0,
        )
    top, rows = finder.finish()
    assert finder.n_found == 1
    (event,) = rows
    assert (event.t_start, event.t_stop, event.y, event.x) == (95, 110, 11, 21)
    assert event.kept == pytest.approx(1.0)
    assert event.z == pytest.approx(5.0 * 135 / np.sqrt(135))
    assert top[0].crops["raw"].shape[1:] == (24, 24)
    assert top[0].frames[0] == 92


def test_first_pass_notices_and_the_crop_are_in_the_noise_section():
    raw = calmdown.simulate("dense", photons=4.0, shape=(80, 40, 40), seed=1).raw
    raw = raw.astype(np.float32)
    raw = np.minimum(raw, np.percentile(raw, 97))  # a saturation ceiling
    raw[:, :2] = 0.0  # padded rows at the top of every frame
    with pytest.warns(UserWarning, match="a ceiling"):
        report = make_report(raw, crop="auto", movie_frames=10, **FAST)
    assert "First pass: " in report.html and "a ceiling (saturation)" in report.html
    assert "frames 0:80, rows 2:40, columns 0:40" in report.html
