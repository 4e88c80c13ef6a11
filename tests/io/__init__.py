"""Tests of calmdown.io."""
