"""Run the napari widget on the real recording and save a screenshot of the whole viewer.

Needs ``calmdown[napari]`` and an OpenGL context: on a machine without a display run it under
Xvfb with Qt's xcb platform (Debian: ``apt-get install xvfb libxcb-cursor0 libxcb-icccm4
libxcb-keysyms1``; Qt's offscreen platform has no OpenGL, so the canvas would stay black)::

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python benchmarks/results/napari/screenshot.py --time-budget 60

Writes ``screenshot.png`` and ``screenshot.json`` (timings, settings) beside this file. The
recording is read in place from ``../shared/data`` (it is never copied).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RECORDING = HERE.parents[3] / "shared" / "data" / "optinist-mouse2p-top-2000x64x128.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movie", type=Path, default=RECORDING)
    parser.add_argument("--time-budget", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=HERE / "screenshot.png")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import napari
        from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    viewer = napari.Viewer(show=False, title="calmdown in napari")
    viewer.window.resize(1600, 950)
    (layer,) = viewer.open(args.movie, plugin="calmdown")
    t_open = time.perf_counter() - t0
    _, widget = viewer.window.add_plugin_dock_widget("calmdown", "Denoise (calmdown)")
    widget.layer.value = layer
    widget.time_budget.value = args.time_budget
    widget.interval.value = 0.9
    app = QApplication.instance()
    t1 = time.perf_counter()
    if widget.run() is None:
        raise SystemExit("the widget did not start; see the notification")
    last = -10.0
    while widget.busy:
        app.processEvents()
        time.sleep(0.05)
        if time.perf_counter() - last >= 10:
            last = time.perf_counter()
            print(f"{last - t1:6.1f} s  {widget.status.value}", flush=True)
    app.processEvents()
    t_run = time.perf_counter() - t1
    names = [lay.name for lay in viewer.layers]
    print("layers:", names, "| status:", widget.status.value)

    # Show the frame where the denoised movie is brightest (a burst of activity), raw and the
    # three outputs side by side.
    denoised = viewer.layers[f"{layer.name} denoised"].data
    frame = int(np.argmax(denoised.mean(axis=(1, 2))))
    viewer.dims.set_point(0, frame * layer.scale[0] + layer.translate[0])
    for lay in viewer.layers:
        lay.visible = True
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9
    grid.enabled = True
    grid.shape = (2, 2)
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    info = {
        "movie": args.movie.name,
        "shape": list(layer.data.shape),
        "dtype": str(layer.data.dtype),
        "frame_shown": frame,
        "open_seconds": round(t_open, 2),
        "run_seconds": round(t_run, 1),
        "time_budget_s": args.time_budget,
        "layers": names,
        "status": widget.status.value,
    }
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    viewer.close()


if __name__ == "__main__":
    main()
