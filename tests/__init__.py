"""Tests of calmdown, mirroring the package."""
