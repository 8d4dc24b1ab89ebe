"""What Ray workers and Serve replicas are told through ``runtime_env`` -- one rule for both.

Why a rule: Ray records a runtime_env in the cluster's metadata, so nothing secret may travel in it.  The project's
own ``FLYWHEEL_*`` settings do (where the store and the workspace are), and the endpoints a teacher spec reads from
the environment (``AZURE_OPENAI_ENDPOINT`` for ``azure:``, ``OLLAMA_BASE_URL`` for ``ollama:``, ...: a Serve
replica builds its teacher from the spec), every URL without its password; no ``*KEY*``
variable ever does.  PGPASSWORD / ~/.pgpass and the teacher's API key come from each node's own environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llm_flywheel.store.engine import without_password
from llm_flywheel.teachers.registry import AZURE_ENDPOINT_ENV, LOCAL_BASE_ENV

ENDPOINT_VARS = (AZURE_ENDPOINT_ENV, *LOCAL_BASE_ENV.values())


def env_for_ray(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: without_password(v) for k, v in env.items()
            if (k.startswith("FLYWHEEL_") or k in ENDPOINT_VARS) and "KEY" not in k.upper()}
