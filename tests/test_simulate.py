"""Behaviour of the ground-truth simulator on small seeded movies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from calmdown.errors import InputError
from calmdown.simulate import (
    PRESETS,
    Detector,
    SimulatedMovie,
    sample_movie,
    simulate,
    write_simulation,
)

SMALL = (60, 48, 48)


@pytest.fixture(scope="module")
def eventful() -> SimulatedMovie:
    return simulate("dense", photons=1.0, shape=(600, 96, 96), seed=3, n_events=30)


def _variance_law(sim: SimulatedMovie, photons: np.ndarray) -> np.ndarray:
    d = sim.detector
    return d.conversion_gain * d.gain * photons.astype(np.float64) + d.read_noise**2


def test_same_seed_same_movie_other_seed_other_movie() -> None:
    a = simulate("dense", shape=SMALL, seed=7, n_events=2)
    b = simulate("dense", shape=SMALL, seed=7, n_events=2)
    c = simulate("dense", shape=SMALL, seed=8, n_events=2)
    np.testing.assert_array_equal(a.raw, b.raw)
    np.testing.assert_array_equal(a.photons, b.photons)
    assert not np.array_equal(a.raw, c.raw)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("preset", PRESETS)
def test_shapes_and_dtypes(preset: str) -> None:
    sim = simulate(preset, shape=SMALL, seed=1, n_events=2)
    for movie in (sim.raw, sim.clean, sim.photons):
        assert movie.shape == SMALL
        assert movie.dtype == np.float32
    np.testing.assert_array_equal(sim.raw, np.rint(sim.raw))
    assert sim.labels.shape == SMALL[1:]
    assert sim.labels.dtype == np.int32
    n_rois = int(sim.labels.max())
    assert sim.roi_traces.shape == (n_rois, SMALL[0])
    assert sim.roi_traces.dtype == np.float32
    assert len(sim.spike_times) == n_rois
    assert sim.preset == preset
    assert sim.photons_level == 1.0
    np.testing.assert_allclose(
        sim.clean, sim.detector.offset + sim.detector.gain * sim.photons, rtol=1e-6
    )
    if n_rois:
        ids = np.unique(sim.labels)
        np.testing.assert_array_equal(ids, np.arange(n_rois + 1))
        roi = sim.labels == 1
        expected = (sim.clean[:, roi] - sim.detector.offset).mean(axis=1)
        np.testing.assert_allclose(sim.roi_traces[0], expected, rtol=1e-4)


def test_noise_and_static_are_constant_in_time() -> None:
    noise = simulate("noise", photons=2.0, shape=SMALL, seed=0)
    assert np.all(noise.photons == 2.0)
    assert noise.labels.max() == 0
    assert noise.roi_traces.shape == (0, SMALL[0])
    assert noise.events == []
    assert not noise.process_mask.any()
    static = simulate("static", shape=SMALL, seed=0)
    assert static.labels.max() > 5
    assert np.ptp(static.photons, axis=0).max() == 0
    assert static.events == []
    assert all(s.size == 0 for s in static.spike_times)
    assert np.ptp(static.photons[0]) > 0.5  # a structured scene, not a flat one


def test_sparse_has_fewer_somata_than_dense() -> None:
    dense = simulate("dense", shape=(30, 96, 96), seed=2, n_events=0)
    sparse = simulate("sparse", shape=(30, 96, 96), seed=2, n_events=0)
    assert 1 <= sparse.labels.max() <= 0.35 * dense.labels.max()


def test_raw_mean_matches_clean_mean() -> None:
    sim = simulate("dense", photons=1.0, shape=(300, 64, 64), seed=4)
    assert sim.raw.mean(dtype=np.float64) == pytest.approx(
        sim.clean.mean(dtype=np.float64), rel=0.01
    )
    signal = sim.clean.mean(dtype=np.float64) - sim.detector.offset
    excess = sim.raw.mean(dtype=np.float64) - sim.clean.mean(dtype=np.float64)
    assert abs(excess) < 0.03 * signal


@pytest.mark.parametrize(
    ("photons", "detector"),
    [
        (1.0, None),
        (4.0, Detector(gain=3.0, excess_noise_factor=1.0, offset=50.0, read_noise=1.0)),
        (0.3, Detector(gain=20.0, excess_noise_factor=1.6, offset=10.0, read_noise=5.0)),
    ],
)
def test_noise_variance_follows_photon_transfer_law(photons: float, detector: Detector) -> None:
    sim = simulate("noise", photons=photons, shape=(300, 64, 64), seed=5, detector=detector)
    d = sim.detector
    expected = d.conversion_gain * d.gain * photons + d.read_noise**2
    per_pixel = sim.raw.astype(np.float64).var(axis=0, ddof=1)
    assert per_pixel.mean() == pytest.approx(expected, rel=0.05)
    assert sim.raw.mean(dtype=np.float64) == pytest.approx(d.offset + d.gain * photons, rel=0.01)


def test_resting_cytoplasm_has_requested_photons() -> None:
    level = 2.5
    sim = simulate("static", photons=level, shape=(20, 96, 96), seed=6)
    frame = sim.photons[:5].mean(axis=0)
    yy, xx = np.indices(sim.labels.shape)
    cytoplasm = np.zeros(sim.labels.shape, dtype=bool)
    for i in range(1, sim.labels.max() + 1):
        roi = sim.labels == i
        ys, xs = yy[roi], xx[roi]
        if ys.min() == 0 or xs.min() == 0 or ys.max() == 95 or xs.max() == 95:
            continue  # cut by the field edge: the centroid is not the soma's centre
        radius = math.sqrt(roi.sum() / math.pi)
        dist = np.hypot(yy - ys.mean(), xx - xs.mean())
        cytoplasm |= roi & (dist > 0.65 * radius)
    assert cytoplasm.sum() > 300
    assert np.median(frame[cytoplasm]) == pytest.approx(level, rel=0.15)
    # the nucleus is dimmer than the cytoplasm, the neuropil dimmer still
    nucleus = (sim.labels > 0) & ~cytoplasm
    assert np.median(frame[sim.labels == 0]) < 0.6 * level
    assert np.median(frame[nucleus]) < np.median(frame[cytoplasm])


def test_events_span_z_classes(eventful: SimulatedMovie) -> None:
    z = np.array([e.z_oracle for e in eventful.events])
    assert len(eventful.events) == 30
    assert z.min() < 4
    assert z.max() >= 8
    for lo, hi in ((0, 4), (4, 8), (8, np.inf)):
        assert 7 <= ((z >= lo) & (z < hi)).sum() <= 13
    assert z.min() > 1.4
    assert z.max() < 42


def test_event_z_oracle_reproduces_from_event_movie(eventful: SimulatedMovie) -> None:
    n_t = eventful.raw.shape[0]
    for i, e in enumerate(eventful.events):
        assert e.index == i
        assert 0 <= e.t_start < e.t_stop <= n_t
        contribution = eventful.event_movie(e)
        assert contribution.dtype == np.float32
        assert contribution.shape == (e.t_stop - e.t_start, len(e.ys))
        variance = _variance_law(eventful, eventful.photons[e.t_start : e.t_stop, e.ys, e.xs])
        z = contribution.astype(np.float64).sum() / math.sqrt(variance.sum())
        assert z == pytest.approx(e.z_oracle, rel=0.01)
        assert e.weights.max() == pytest.approx(1.0)
        assert e.peak_photons == pytest.approx(float(e.time_course.max()))
        # the time course is cut where it falls below 1 % of its peak
        assert min(e.time_course[0], e.time_course[-1]) > 0.009 * e.peak_photons
        assert 3 <= len(e.ys) <= 20


def test_event_supports_do_not_overlap(eventful: SimulatedMovie) -> None:
    events = eventful.events
    assert all(eventful.process_mask[e.ys, e.xs].all() for e in events)
    for a_i, a in enumerate(events):
        pa = np.stack([a.ys, a.xs], 1)
        assert len(np.unique(pa, axis=0)) == len(pa)
        for b in events[a_i + 1 :]:
            if b.t_start >= a.t_stop + 5 or a.t_start >= b.t_stop + 5:
                continue
            pb = np.stack([b.ys, b.xs], 1)
            chebyshev = np.abs(pa[:, None, :] - pb[None, :, :]).max(-1)
            assert chebyshev.min() > 2


def test_processes_flash_only_in_events(eventful: SimulatedMovie) -> None:
    sim = eventful
    n_t = sim.raw.shape[0]
    fade = np.exp(-0.1 * np.arange(n_t) / n_t)[:, None]
    ys, xs = np.nonzero(sim.process_mask)
    assert ys.size > 100
    trace = sim.photons[:, ys, xs] / fade  # bleaching removed
    in_event = np.zeros(trace.shape, dtype=bool)
    column = {(y, x): j for j, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True))}
    for e in sim.events:
        cols = [column[(y, x)] for y, x in zip(e.ys.tolist(), e.xs.tolist(), strict=True)]
        in_event[e.t_start : e.t_stop, cols] = True
    quiet = np.where(in_event, np.nan, trace)
    median = np.nanmedian(quiet, axis=0)
    spread = (np.nanmax(quiet, axis=0) - np.nanmin(quiet, axis=0)) / median
    assert spread.max() < 0.3  # only the slow neuropil fluctuation remains
    # positive control: inside the events the same measure is large
    loud = np.where(in_event, trace, np.nan)
    loud_cols = in_event.any(axis=0)
    excess = (np.nanmax(loud[:, loud_cols], axis=0) - median[loud_cols]) / median[loud_cols]
    assert excess.max() > 1.0


def test_somata_spike_and_some_are_silent(eventful: SimulatedMovie) -> None:
    sim = eventful
    counts = np.array([s.size for s in sim.spike_times])
    assert (counts == 0).sum() >= 1
    duration = sim.raw.shape[0] / sim.frame_rate
    rates = counts[counts > 0] / duration
    assert 0.1 < np.median(rates) < 2.0
    relative = np.ptp(sim.roi_traces, axis=1) / np.median(sim.roi_traces, axis=1)
    assert relative[counts == 0].max() < 0.3  # bleaching and neuropil only
    assert np.median(relative[counts > 0]) > 0.5


def test_bleaching_scales_the_scene() -> None:
    sim = simulate("dense", shape=(200, 48, 48), seed=9, n_events=0, bleach=2.0)
    background = (sim.labels == 0) & ~sim.process_mask
    first = sim.photons[:20, background].mean()
    last = sim.photons[-20:, background].mean()
    assert last / first == pytest.approx(math.exp(-2.0 * 180 / 200), rel=0.25)


def test_default_event_count_has_a_floor() -> None:
    sim = simulate("dense", shape=(300, 64, 64), seed=1)
    assert len(sim.events) == 12


def test_sample_movie() -> None:
    sim = sample_movie(seed=2)
    assert sim.raw.shape == (600, 96, 96)
    assert sim.preset == "dense"
    assert sim.photons_level == 1.0
    assert sim.seed == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"preset": "crowded"},
        {"photons": 0.0},
        {"photons": -1.0},
        {"photons": float("nan")},
        {"shape": (100, 64)},
        {"shape": (100, 64, 64.0)},
        {"shape": (100, -64, 64)},
        {"shape": (10, 64, 64)},
        {"shape": (100, 8, 64)},
        {"frame_rate": 0.0},
        {"n_events": -1},
        {"bleach": -0.1},
        {"seed": -1},
        {"detector": "pmt"},
    ],
)
def test_bad_arguments_raise_input_error(kwargs: dict) -> None:
    preset = kwargs.pop("preset", "dense")
    with pytest.raises(InputError, match=r"e\.g\.|pass|must be") as info:
        simulate(preset, **kwargs)
    assert isinstance(info.value, ValueError)


def test_bad_detector_raises_input_error() -> None:
    with pytest.raises(InputError, match="excess_noise_factor"):
        Detector(gain=10.0, excess_noise_factor=0.5, offset=0.0, read_noise=1.0)
    with pytest.raises(InputError, match="gain"):
        Detector(gain=0.0, excess_noise_factor=1.2, offset=0.0, read_noise=1.0)
    assert Detector().conversion_gain == pytest.approx(12.5)


def test_write_simulation_round_trip(tmp_path) -> None:
    sim = simulate("dense", shape=(40, 48, 48), seed=2, n_events=3)
    out = write_simulation(sim, str(tmp_path / "sim"))
    assert out == tmp_path / "sim"
    names = {p.name for p in out.iterdir()}
    assert names == {
        "raw.tif",
        "clean.tif",
        "labels.tif",
        "roi_traces.npy",
        "events.json",
        "spikes.json",
        "truth.json",
    }
    raw = tifffile.imread(out / "raw.tif")
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, sim.raw)
    np.testing.assert_array_equal(tifffile.imread(out / "clean.tif"), sim.clean)
    labels = tifffile.imread(out / "labels.tif")
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, sim.labels)
    np.testing.assert_array_equal(np.load(out / "roi_traces.npy"), sim.roi_traces)
    events = json.loads((out / "events.json").read_text())
    assert len(events) == len(sim.events) == 3
    for saved, e in zip(events, sim.events, strict=True):
        assert saved["z_oracle"] == pytest.approx(e.z_oracle)
        assert saved["ys"] == e.ys.tolist()
        np.testing.assert_allclose(saved["time_course"], e.time_course, rtol=1e-6)
    spikes = json.loads((out / "spikes.json").read_text())
    assert [len(s) for s in spikes] == [s.size for s in sim.spike_times]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["shape"] == [40, 48, 48]
    assert truth["detector"]["conversion_gain"] == pytest.approx(12.5)
    assert truth["seed"] == 2
    assert truth["preset"] == "dense"
    # writing again replaces the files and leaves no partial ones
    write_simulation(sim, out)
    assert not list(out.glob("*.partial"))


def test_too_many_events_warn_only_when_asked_for() -> None:
    with pytest.warns(UserWarning, match="rare events fit"):
        sim = simulate("dense", shape=(20, 16, 16), seed=1, n_events=12)
    assert 0 < len(sim.events) < 12
    short = simulate("dense", shape=(100, 64, 64), seed=0)  # default count: no warning
    assert 0 < len(short.events) <= 12
