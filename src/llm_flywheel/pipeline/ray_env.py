"""What Ray workers and Serve replicas are told through ``runtime_env`` -- one rule for both.

Why a rule: Ray records a runtime_env in the cluster's metadata, so nothing secret may travel in it.  The project's
own ``FLYWHEEL_*`` settings do (where the store and the workspace are), every URL without its password; no ``*KEY*``
variable ever does.  PGPASSWORD / ~/.pgpass and the teacher's API key come from each node's own environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llm_flywheel.store.engine import without_password


def env_for_ray(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: without_password(v) for k, v in env.items() if k.startswith("FLYWHEEL_") and "KEY" not in k.upper()}
