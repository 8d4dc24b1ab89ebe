"""Servers a test starts die with the test run.

Why: a pytest that is killed (a CI timeout, ``kill -9``, a closed terminal) runs no fixture teardown, and servers
started in their own session (so that teardown can stop their whole process group) outlive it -- a llama-server,
Label Studio or chromium left holding ports, memory and CPU that the next run then competes with.
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: the kernel sends the child SIGTERM when the test process exits,
    however it exits (Linux; elsewhere nothing changes)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
