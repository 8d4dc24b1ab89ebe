"""Cached answers belong to the model that gave them: a guard for a local server whose model file changed.

Why: teacher answers are cached by (content, model *name*, prompt, pass), which is right for a provider -- its names
are its models.  llama.cpp serves whatever GGUF it was started with under any name, so a user who restarts
``llama-server`` with another model and keeps the same teacher spec would get the old model's answers back, with no
call made and nothing said.  Each run asks the server which file it serves (llama.cpp's ``/props``, already read for
its slots; llama-cpp-python without an alias lists the GGUF in ``/v1/models``); the first run under a name records
it, and a later one that finds another file stops before any call with the fix: a name of its own for the new
model, under which it is asked afresh.
"""

from __future__ import annotations

import logging

from llm_flywheel.store.base import Store
from llm_flywheel.teachers.base import Teacher
from llm_flywheel.teachers.errors import TeacherConfigError

log = logging.getLogger(__name__)


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
