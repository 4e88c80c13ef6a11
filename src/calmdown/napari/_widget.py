"""napari widget: denoise an image layer with calmdown, in a worker thread, with uncertainty.

The widget reads its settings, checks the layer, and runs :func:`~._run.iter_calmdown` (plain
functions of arrays) in a :func:`napari.qt.threading.thread_worker`. Each progress report
moves the progress bar; when training and denoising are done it adds three image layers with
the input's scale and translation:

``<name> denoised``
    The posterior mean (the denoised movie), in the input's units and contrast limits.
``<name> 90% interval width``
    Upper minus lower bound of the central credible interval (hidden at first).
``<name> p_surprise``
    Probability, per pixel and frame, that the pixel holds an event the context network
    did not predict (hidden at first).

Running again replaces the data of layers of the same names. Cancel ends the run at its next
progress report (within a second while training) and adds nothing; bad input (a 2-D or RGB
layer, too few frames) is reported with :func:`napari.utils.notifications.show_error`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_error, show_info

from calmdown.config import TrainConfig
from calmdown.errors import InputError
from calmdown.napari._run import (
    OUTPUTS,
    RunCancelled,
    RunProgress,
    RunSettings,
    check_movie,
    iter_calmdown,
)

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = ["CalmdownWidget"]

_PROGRESS_STEPS = 1000
_MAX_WIDTH = 420  # pixels: leave the canvas most of the window


@dataclass
class _Outcome:
    """What a run ended with: outputs, a cancel, or an input error's message."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    cancelled: bool = False
    error: str | None = None


def _work(
    data: Any, settings: RunSettings, stop: threading.Event
) -> Generator[RunProgress, None, _Outcome]:
    """Run calmdown; expected endings (cancel, bad input) become an :class:`_Outcome`.

    Anything else propagates, and napari's worker shows it with its traceback.
    """
    try:
        outputs = yield from iter_calmdown(data, settings, stop=stop)
    except RunCancelled:
        return _Outcome(cancelled=True)
    except InputError as err:
        return _Outcome(error=str(err))
    return _Outcome(outputs=outputs)


class CalmdownWidget(Container):
    """Denoise a (T, Y, X) image layer with calmdown and show its uncertainty.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image layers are offered and to which results are added (a
        ``napari.components.ViewerModel`` works as well).

    Examples
    --------
    >>> import napari, calmdown  # doctest: +SKIP
    >>> viewer = napari.Viewer()  # doctest: +SKIP
    >>> viewer.add_image(calmdown.sample_movie().raw, name="raw")  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(CalmdownWidget(viewer))  # doctest: +SKIP
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._worker: GeneratorWorker | None = None
        self._stop: threading.Event | None = None
        self.layer = ComboBox(label="movie (T, Y, X)", choices=self._image_layers)
        self.time_budget = FloatSpinBox(
            label="training time (s)", value=60.0, min=1.0, max=24 * 3600.0, step=10.0
        )
        self.max_steps = SpinBox(
            label="max training steps",
            value=TrainConfig.model_fields["max_steps"].default,
            min=1,
            max=10_000_000,
        )
        self.interval = FloatSpinBox(
            label="interval level", value=0.9, min=0.5, max=0.999, step=0.05
        )
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.cut_padding = CheckBox(
            text="cut padded edges",
            value=RunSettings.cut_padding,
            tooltip="denoise only the rows, columns and frames measured in every frame: motion "
            "correction's constant or NaN edges, and blank frames at the start and end, are "
            "left out (NaN in the results); off, such a movie is refused",
        )
        self.run_button = PushButton(text="Denoise")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=_PROGRESS_STEPS, value=0)
        self.status = Label(label="", value="choose a movie and press Denoise")
        self.status.native.setWordWrap(True)  # long messages wrap instead of widening the dock
        self.layer.native.setMinimumContentsLength(16)
        self.layer.native.setSizeAdjustPolicy(
            type(self.layer.native).SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.max_width = _MAX_WIDTH
        self.extend(
            [
                self.layer,
                self.time_budget,
                self.max_steps,
                self.interval,
                self.seed,
                self.cut_padding,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # -- state ---------------------------------------------------------------------------
    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(lay.name, lay) for lay in self._viewer.layers if isinstance(lay, Image)]

    def _refresh_layers(self, _event: Any = None) -> None:
        """Offer the image layers; choose the active (or top) one when none is chosen."""
        self.layer.reset_choices()
        if self.layer.value is None:
            images = [layer for _, layer in self._image_layers()]
            active = self._viewer.layers.selection.active
            if images:
                self.layer.value = active if active in images else images[-1]

    @property
    def busy(self) -> bool:
        """Whether a run is in progress."""
        return self._worker is not None

    def settings(self) -> RunSettings:
        """Return the settings chosen in the widget."""
        return RunSettings(
            time_budget_s=float(self.time_budget.value),
            interval=float(self.interval.value),
            seed=int(self.seed.value),
            max_steps=int(self.max_steps.value),
            cut_padding=bool(self.cut_padding.value),
        )

    # -- actions -------------------------------------------------------------------------
    def run(self) -> GeneratorWorker | None:
        """Check the chosen layer and start denoising it in a worker thread.

        Returns
        -------
        GeneratorWorker or None
            The started worker, or None when nothing was started (bad input, already
            running); the reason is shown as a notification.
        """
        if self._worker is not None:
            show_info("calmdown is already running; wait for it or press Cancel")
            return None
        self._refresh_layers()
        layer = self.layer.value
        if layer is None:
            show_error("calmdown: open a movie (T, Y, X) as an image layer first")
            return None
        try:
            _check_layer(layer)
        except InputError as err:
            show_error(f"calmdown: {err}")
            self.status.value = "not started: see the notification"
            return None
        settings = self.settings()
        placement = {
            "scale": np.array(layer.scale),
            "translate": np.array(layer.translate),
            "contrast_limits": tuple(layer.contrast_limits),
            "colormap": layer.colormap.name,
        }
        self._stop = threading.Event()
        worker = thread_worker(_work, start_thread=False)(layer.data, settings, self._stop)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(
            lambda outcome: self._on_returned(outcome, layer.name, settings, placement)
        )
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = f"starting on '{layer.name}'…"
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop; it ends at its next progress report, adding no layers."""
        if self._stop is not None:
            self._stop.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    # -- worker callbacks (main thread) --------------------------------------------------
    def _on_progress(self, report: RunProgress) -> None:
        self.progress.value = round(report.fraction * _PROGRESS_STEPS)
        self.status.value = report.message

    def _on_returned(
        self,
        outcome: _Outcome,
        name: str,
        settings: RunSettings,
        placement: dict[str, Any],
    ) -> None:
        if outcome.cancelled:
            self.status.value = "cancelled; no layers added"
            show_info("calmdown: cancelled")
            return
        if outcome.error is not None:
            self.status.value = "failed: see the notification"
            show_error(f"calmdown: {outcome.error}")
            return
        self._add_layers(outcome.outputs, name, settings, placement)

    def _on_finished(self) -> None:
        self._worker = None
        self._stop = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _add_layers(
        self,
        outputs: dict[str, np.ndarray],
        name: str,
        settings: RunSettings,
        placement: dict[str, Any],
    ) -> None:
        level = f"{100 * settings.interval:g}%"
        meta = {
            "calmdown": {
                "source_layer": name,
                **settings.options(),
                "interval": level,
                "cut_padding": settings.cut_padding,
            }
        }
        styles = {
            "denoised": (
                f"{name} denoised",
                {
                    "colormap": placement["colormap"],
                    "contrast_limits": placement["contrast_limits"],
                },
            ),
            "interval_width": (f"{name} {level} interval width", {"colormap": "magma"}),
            "p_surprise": (
                f"{name} p_surprise",
                {"colormap": "inferno", "contrast_limits": (0.0, 1.0)},
            ),
        }
        for key in OUTPUTS:
            layer_name, style = styles[key]
            data = outputs[key]
            where = {"scale": placement["scale"], "translate": placement["translate"]}
            if layer_name in self._viewer.layers:
                old = self._viewer.layers[layer_name]
                old.data = data
                old.scale, old.translate = where["scale"], where["translate"]
                old.metadata = meta
                continue
            if key == "interval_width":
                style["contrast_limits"] = _robust_limits(data)
            self._viewer.add_image(
                data,
                name=layer_name,
                metadata=meta,
                visible=key == "denoised",
                **where,
                **style,
            )
        self.status.value += "; added 3 layers (uncertainty ones hidden)"


def _check_layer(layer: Image) -> None:
    """Raise :class:`InputError` unless ``layer`` holds a plain (T, Y, X) movie."""
    if layer.rgb:
        raise InputError(
            f"layer '{layer.name}' is an RGB image; calmdown needs a single-channel movie "
            "(T, Y, X) of raw intensities"
        )
    if layer.multiscale:
        raise InputError(
            f"layer '{layer.name}' is multiscale; open the full-resolution movie as a single "
            "(T, Y, X) array"
        )
    check_movie(layer.data, name=f"layer '{layer.name}'")


def _robust_limits(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5th and 99.5th percentiles of a subsample."""
    sample = np.asarray(data[:: max(1, data.shape[0] // 50)], dtype=np.float32)
    sample = sample[np.isfinite(sample)]  # NaN where padding was cut away
    if not sample.size:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
