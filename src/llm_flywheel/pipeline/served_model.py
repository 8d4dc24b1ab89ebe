"""Cached answers belong to the model that gave them: a guard for a local server whose model file changed.

Why: teacher answers are cached by (content, model *name*, prompt, pass), which is right for a provider -- its names
are its models.  llama.cpp serves whatever GGUF it was started with under any name, so a user who restarts
``llama-server`` with another model and keeps the same teacher spec would get the old model's answers back, with no
call made and nothing said.  Each run asks the server which file it serves (llama.cpp's ``/props``, already read for
its slots; llama-cpp-python without an alias lists the GGUF in ``/v1/models``); the first run under a name records
it, and a later one that finds another file stops before any call with the fix: a name of its own for the new
model, under which it is asked afresh.

A provider's alias moves too (``gpt-4o`` is one dated snapshot, later another); there the answers are the provider's
and nothing is refused, but each answer records the model its response named (``served_model``) and a run whose
answers came from more than one says so (:func:`mixed_models_warning`).
"""

from __future__ import annotations

import logging

from llm_flywheel.store.base import Store
from llm_flywheel.teachers.base import Teacher
from llm_flywheel.teachers.errors import TeacherConfigError

log = logging.getLogger(__name__)


def mixed_models_warning(model: str, base_url: str, counts: dict[str, int]) -> dict[str, str] | None:
    """A warning (code, message, fix) when the answers a run used came from more than one model (a provider's alias
    moved from one snapshot to another, e.g. ``gpt-4o`` -> ``gpt-4o-2024-11-20``); None when they agree."""
    if len(counts) < 2:
        return None
    seen = ", ".join(f"{m} ({n:,})" for m, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"code": "mixed_models",
            "message": f"the answers under the model name {model!r} came from {len(counts)} models by the "
                       f"provider's own account ({seen} answers), so these labels mix them",
            "fix": f"to keep one model, name it in the spec, e.g. --teacher '{base_url}|<one of them>': a dated "
                   f"snapshot does not move (answers under the new name are asked afresh)"}


def check_served_model(store: Store, teacher: Teacher) -> None:
    """Refuse (``TeacherConfigError``) when the server now serves another model file under a name whose answers are
    cached here; remember the file otherwise.  A server that does not say which file it serves is not checked."""
    served = teacher.server_info().model_file
    if not served:
        return
    seen = store.teacher_model_file(teacher.model)
    if seen is not None and seen["model_file"] != served:
        cached = store.teacher_answer_count(teacher.model)
        if cached:
            raise TeacherConfigError(
                f"the server at {teacher.base_url} now serves {served}, but the {cached} answers cached in this "
                f"workspace under the model name {teacher.model!r} came from {seen['model_file']} (at "
                f"{seen['base_url']}); they would be reused as this model's. Give the new model its own name so it "
                f"is asked afresh: --teacher '{teacher.base_url}|<new-name>' (llama-server takes any name; "
                f"--alias <new-name> makes it say so)")
        log.info("%s: the server now serves %s (was %s); no answers were cached under this name",
                 teacher.display_name, served, seen["model_file"])
    if seen is None or seen["model_file"] != served or seen["base_url"] != teacher.base_url:
        store.set_teacher_model_file(teacher.model, served, teacher.base_url)
