"""The interfaces over the pipeline: the Python API, the CLI, the HTTP service and the report.

Nothing below this package imports from here."""
