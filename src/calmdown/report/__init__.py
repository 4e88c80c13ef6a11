"""A review report a person opens in a browser: one self-contained HTML page.

:func:`write_report` streams the movie once through a trained model and shows, side by side,
the raw movie, a moving average, the denoised movie and its uncertainty, with the noise model,
the calibration, and ground-truth-free checks for invented structure (hallucination, wobble),
removed signal (residuals) and rare events (surprise).
"""

from __future__ import annotations

from calmdown.report.build import Report, build_report, make_report, write_report

__all__ = ["Report", "build_report", "make_report", "write_report"]
