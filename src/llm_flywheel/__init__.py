"""llm-flywheel: an LLM teaches, a small student learns, a calibrated cascade serves, feedback turns the wheel."""

__version__ = "0.1.0"
