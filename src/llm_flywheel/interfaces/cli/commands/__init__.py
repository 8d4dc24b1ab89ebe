"""One module of click commands per stage of the wheel; registered by ``llm_flywheel.interfaces.cli``."""
