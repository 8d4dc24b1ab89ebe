"""The pure core: numpy/scipy arithmetic with no I/O, no store and no network.

Consensus, calibration, thresholds, selection scores, cost and metrics live here so that every number the
wheel reports can be tested on plain arrays, and so the pipeline and the interfaces share one definition.
"""
