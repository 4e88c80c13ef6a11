"""The napari plugin: manifest, reader, widget (headless Qt) and the plain function it runs."""

from __future__ import annotations

import ast
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

import calmdown
from calmdown.io import READ_FORMATS
from calmdown.napari import RunSettings, napari_get_reader, run_calmdown
from calmdown.napari._reader import movie_layer_data
from calmdown.simulate import SimulatedMovie

with warnings.catch_warnings():
    # napari and npe2 still use pydantic v1-style options, deprecated in pydantic 2.
    warnings.simplefilter("ignore", DeprecationWarning)
    napari = pytest.importorskip(
        "napari", reason="napari is not installed; pip install 'calmdown[napari]' to test it"
    )
    pytest.importorskip("magicgui", reason="magicgui is not installed (calmdown[napari])")
    npe2 = pytest.importorskip("npe2", reason="npe2 is not installed (comes with napari)")
    from napari.components import ViewerModel

    from calmdown.napari import _widget
    from calmdown.napari._widget import CalmdownWidget

MANIFEST = Path(calmdown.__file__).parent / "napari" / "napari.yaml"
FAST = RunSettings(time_budget_s=20, max_steps=5, interval=0.8, seed=0)


@pytest.fixture(scope="module")
def sim() -> SimulatedMovie:
    return calmdown.simulate("dense", photons=2.0, shape=(60, 32, 32), seed=0)


@pytest.fixture(scope="module", autouse=True)
def _discover_plugins() -> None:
    """Let napari find installed plugins (its Viewer does this when it starts)."""
    npe2.PluginManager.instance().discover()


def _movie(shape: tuple[int, int, int] = (12, 16, 20)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=shape, dtype=np.uint16)


def _wait(widget: CalmdownWidget, timeout_s: float = 60.0) -> None:
    """Process Qt events until the widget's run has finished."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + timeout_s
    while widget.busy:
        if time.monotonic() > deadline:
            widget.cancel()
            raise AssertionError(f"the run did not finish within {timeout_s} s")
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()


# -- manifest ------------------------------------------------------------------------------


def test_manifest_validates_and_imports() -> None:
    from_file = npe2.PluginManifest.from_file(MANIFEST)
    installed = npe2.PluginManifest.from_distribution("calmdown")  # via the entry point
    assert installed.name == from_file.name == "calmdown"
    installed.validate_imports()  # every python_name resolves
    commands = {c.id for c in installed.contributions.commands}
    assert {"calmdown.get_reader", "calmdown.make_widget", "calmdown.sample_movie"} <= commands


def test_manifest_reader_patterns_cover_read_formats() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    patterns = set(manifest.contributions.readers[0].filename_patterns)
    missing = {ext for ext in READ_FORMATS if f"*{ext}" not in patterns}
    assert not missing, f"add {sorted(missing)} to the reader's filename_patterns"


# -- reader --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".h5"])
def test_reader_opens_movie_into_layer(tmp_path: Path, suffix: str) -> None:
    movie = _movie()
    path = tmp_path / f"movie{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, movie)
    else:
        with h5py.File(path, "w") as f:
            f["data"] = movie
    viewer = ViewerModel()
    layers = viewer.open(path, plugin="calmdown")
    assert len(layers) == 1
    assert layers[0].name == "movie"
    assert layers[0].data.shape == movie.shape
    np.testing.assert_array_equal(np.asarray(layers[0].data), movie)
    assert layers[0].metadata["calmdown_path"] == str(path)


def test_reader_is_lazy_for_large_movies(tmp_path: Path) -> None:
    movie = _movie((30, 16, 20))
    path = tmp_path / "movie.npy"
    np.save(path, movie)
    data, meta, kind = movie_layer_data(path, in_memory_bytes=0)
    assert kind == "image" and meta["name"] == "movie"
    assert type(data).__module__.startswith("dask")
    assert data.dtype == np.uint16 and data.shape == movie.shape
    np.testing.assert_array_equal(data[7].compute(), movie[7])
    np.testing.assert_array_equal(data[3:29:5, 2:9].compute(), movie[3:29:5, 2:9])
    np.testing.assert_array_equal(data.compute(), movie)


def test_reader_declines_files_not_ours(tmp_path: Path) -> None:
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, _movie()[0])  # a single 2-D image, not a movie
    text = tmp_path / "notes.txt"
    text.write_text("not a movie")
    assert napari_get_reader(str(image)) is None
    assert napari_get_reader(str(text)) is None
    assert napari_get_reader(str(tmp_path / "missing.tif")) is None


# -- the plain function (no Qt) ------------------------------------------------------------


def test_run_calmdown_returns_outputs_of_the_input_shape(sim: SimulatedMovie) -> None:
    raw = sim.raw.copy()
    reports = []
    out = run_calmdown(raw, FAST, progress=reports.append)
    assert sorted(out) == ["denoised", "interval_width", "p_surprise"]
    for arr in out.values():
        assert arr.shape == raw.shape and arr.dtype == np.float32
        assert np.isfinite(arr).all()
    assert (out["interval_width"] > 0).all()
    assert ((out["p_surprise"] >= 0) & (out["p_surprise"] <= 1)).all()
    np.testing.assert_array_equal(raw, sim.raw)  # input unchanged
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [r.stage for r in reports][-1] == "done"


def _padded(sim: SimulatedMovie) -> np.ndarray:
    """Return the movie as motion correction leaves it: zero and NaN edges, a blank start."""
    movie = sim.raw.astype(np.float32)
    movie[0] = 0.0  # the shutter opened late
    movie[5, :2] = 0.0  # moved down by 2 rows, zero fill
    movie[9, :, -1] = np.nan  # moved left by a column, NaN fill
    return movie


def test_run_calmdown_cuts_padding_and_leaves_it_nan(sim: SimulatedMovie) -> None:
    movie = _padded(sim)
    reports: list = []
    out = run_calmdown(movie, FAST, progress=reports.append)
    measured = np.zeros(movie.shape, bool)
    measured[1:, 2:, :-1] = True
    for arr in out.values():
        assert arr.shape == movie.shape
        assert np.isfinite(arr[measured]).all()
        assert np.isnan(arr[~measured]).all()
    assert "frames 1:60, rows 2:32, columns 0:31" in reports[-1].message


def test_run_calmdown_without_cutting_names_the_padding(sim: SimulatedMovie) -> None:
    settings = RunSettings(**{**FAST.__dict__, "cut_padding": False})
    named = "frame 9 has 1 column at the right filled with NaN"
    with pytest.raises(calmdown.InputError, match=named):
        run_calmdown(_padded(sim), settings)


def test_run_calmdown_rejects_2d_data() -> None:
    with pytest.raises(calmdown.InputError, match=r"2-D image of shape \(16, 20\)"):
        run_calmdown(_movie()[0], FAST)


def test_qt_free_modules_do_not_import_qt_at_module_level() -> None:
    # What the package imports on `import calmdown.napari` (the widget module is lazy).
    gui = {"qtpy", "PySide6", "PyQt5", "PyQt6", "napari", "magicgui", "superqt", "vispy"}
    package = MANIFEST.parent
    for name in ("__init__.py", "_run.py", "_reader.py", "_sample_data.py"):
        tree = ast.parse((package / name).read_text())
        for node in tree.body:  # top level only: imports inside functions are lazy
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & gui, f"{name} imports {roots & gui} at module level"


# -- the widget (headless Qt, no OpenGL canvas) --------------------------------------------


def test_widget_adds_three_layers_with_the_input_placement(sim: SimulatedMovie) -> None:
    viewer = ViewerModel()
    viewer.add_image(sim.raw, name="raw", scale=(1.0, 2.0, 0.5), translate=(0.0, 10.0, -4.0))
    widget = CalmdownWidget(viewer)
    assert widget.layer.value is viewer.layers["raw"]
    widget.time_budget.value = FAST.time_budget_s
    widget.max_steps.value = FAST.max_steps
    widget.interval.value = FAST.interval
    assert widget.run() is not None
    assert widget.busy
    _wait(widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["raw", "raw denoised", "raw 80% interval width", "raw p_surprise"]
    for layer in viewer.layers[1:]:
        assert layer.data.shape == sim.raw.shape
        np.testing.assert_array_equal(layer.scale, (1.0, 2.0, 0.5))
        np.testing.assert_array_equal(layer.translate, (0.0, 10.0, -4.0))
    assert viewer.layers["raw denoised"].visible
    assert widget.progress.value == widget.progress.max
    assert widget.status.value.startswith("done")


def test_widget_cut_padding_checkbox_sets_the_run(
    sim: SimulatedMovie, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    monkeypatch.setattr(_widget, "show_error", errors.append)
    viewer = ViewerModel()
    viewer.add_image(_padded(sim), name="registered")
    widget = CalmdownWidget(viewer)
    assert widget.cut_padding.value and widget.settings().cut_padding
    widget.cut_padding.value = False
    widget.time_budget.value, widget.max_steps.value = FAST.time_budget_s, FAST.max_steps
    assert not widget.settings().cut_padding
    assert widget.run() is not None
    _wait(widget)
    assert len(errors) == 1 and ("padding" in errors[0] or "blank" in errors[0])
    assert len(viewer.layers) == 1
    widget.cut_padding.value = True
    assert widget.run() is not None
    _wait(widget)
    denoised = viewer.layers["registered denoised"]
    assert np.isnan(denoised.data[0]).all() and np.isfinite(denoised.data[1:, 2:, :-1]).all()
    assert denoised.metadata["calmdown"]["cut_padding"] is True
    assert "measured in every frame" in widget.status.value


def test_widget_reports_bad_input_without_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr(_widget, "show_error", errors.append)
    viewer = ViewerModel()
    widget = CalmdownWidget(viewer)
    assert widget.run() is None  # no layer at all
    viewer.add_image(_movie()[0], name="frame")
    widget.layer.value = viewer.layers["frame"]
    assert widget.run() is None
    assert not widget.busy
    assert "open a movie" in errors[0]
    assert "layer 'frame' holds a single 2-D image of shape (16, 20)" in errors[1]
    assert len(viewer.layers) == 1


def test_widget_reports_input_errors_raised_in_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    errors: list[str] = []
    monkeypatch.setattr(_widget, "show_error", errors.append)
    viewer = ViewerModel()
    viewer.add_image(_movie((5, 16, 20)), name="short")  # too few frames for the context
    widget = CalmdownWidget(viewer)
    assert widget.run() is not None
    _wait(widget)
    assert len(errors) == 1 and "frames" in errors[0]
    assert len(viewer.layers) == 1


def test_widget_cancel_adds_nothing(sim: SimulatedMovie, monkeypatch: pytest.MonkeyPatch) -> None:
    infos: list[str] = []
    monkeypatch.setattr(_widget, "show_info", infos.append)
    viewer = ViewerModel()
    viewer.add_image(sim.raw, name="raw")
    widget = CalmdownWidget(viewer)
    widget.time_budget.value = 600
    widget.max_steps.value = 100_000
    widget.run()
    widget.cancel()
    start = time.monotonic()
    _wait(widget, timeout_s=30)
    assert time.monotonic() - start < 15
    assert [layer.name for layer in viewer.layers] == ["raw"]
    assert widget.status.value.startswith("cancelled")
    assert infos == ["calmdown: cancelled"]


@pytest.mark.parametrize(
    "name", ["optinist-mouse2p-top-2000x64x128.tif", "allen-registered-100x100x100.h5"]
)
def test_real_recording_opens_and_denoises_in_the_viewer(shared_data: Path, name: str) -> None:
    path = shared_data / name
    viewer = ViewerModel()
    layers = viewer.open(path, plugin="calmdown")
    assert len(layers) == 1 and layers[0].data.ndim == 3
    # The first 100 frames (the whole Allen movie), as a user would crop a long recording.
    raw = np.asarray(layers[0].data[:100])
    viewer.add_image(raw, name="first frames")
    widget = CalmdownWidget(viewer)
    widget.layer.value = viewer.layers["first frames"]
    widget.time_budget.value = FAST.time_budget_s
    widget.max_steps.value = FAST.max_steps
    widget.interval.value = FAST.interval
    assert widget.run() is not None
    _wait(widget, timeout_s=300)
    assert widget.status.value.startswith("done"), widget.status.value
    added = [layer for layer in viewer.layers if layer.name.startswith("first frames ")]
    assert [layer.name for layer in added] == [
        "first frames denoised",
        "first frames 80% interval width",
        "first frames p_surprise",
    ]
    for layer in added:
        assert layer.data.shape == raw.shape and np.isfinite(layer.data).all()
    # Denoised values lie within the recording's range; intervals have a width.
    den = viewer.layers["first frames denoised"].data
    assert float(raw.min()) - 1 <= np.median(den) <= float(raw.max()) + 1
    assert (viewer.layers["first frames 80% interval width"].data > 0).all()
