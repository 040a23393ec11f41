"""Tests of the FiftyOne plugin (a package, so its conftest does not shadow tests/conftest.py)."""
