"""Headless Qt for the napari plugin's tests (widgets only: no OpenGL canvas is drawn)."""

from __future__ import annotations

import os

# Before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
