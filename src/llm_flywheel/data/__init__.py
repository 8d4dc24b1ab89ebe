"""Dataset adapters: each turns a source into Records and hands them to :func:`register`."""

from llm_flywheel.data.base import ImportReport, Record, StoredImages, load_image, register

__all__ = ["ImportReport", "Record", "StoredImages", "load_image", "register"]
