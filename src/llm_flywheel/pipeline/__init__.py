"""The pipeline: stages of the wheel over the store (data, labelling, training, calibration, cascade,
feedback, rounds).  Stages read and write through :class:`llm_flywheel.store.Store` only and never import an
interface (CLI, HTTP service, report, Python API)."""
