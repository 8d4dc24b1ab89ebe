"""The package version, importable from any layer without pulling in the public API."""

__version__ = "0.1.0"
