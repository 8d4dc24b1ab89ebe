"""Who is running what: process identities that can be checked, and leases for what one process may run at a time.

Why: processes that share a workspace (two terminals, a cron job, a notebook, other machines on one PostgreSQL
store) meet only in the store.  A claim or lease names its owner as ``host|boot|pid|tag``; on the same machine and
boot a gone pid means a dead owner, freed at once (``kill -9`` then a re-run must not wait); elsewhere the owner is
judged by its heartbeat alone.  :func:`lease` is one holder per name -- the wheel on a dataset -- kept by a
heartbeat thread, so a long training step in the holder does not look like a dead process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from llm_flywheel.store.workspace import Workspace

log = logging.getLogger(__name__)

LEASE_STALE_S = 60.0  # a lease not refreshed for this long belongs to a process that died (or hung): taken over
LEASE_REFRESH_S = 10.0


@lru_cache(maxsize=1)
def _boot_id() -> str:
    """This machine's boot (Linux); with the host name it tells whether an owner's pid can be checked here."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return ""


def owner_id(tag: str) -> str:
    """``host|boot|pid|tag``: unique per process and tag, and enough to tell on this machine whether it lives."""
    return f"{socket.gethostname()}|{_boot_id()}|{os.getpid()}|{tag}"


def known_dead(owner: str) -> bool:
    """True when ``owner``'s process ran on this machine since its last boot and is gone; False when it may live
    (another machine, another boot, or a pid that exists -- a reused pid only delays the take-over until stale)."""
    host, boot, pid, *_ = (owner.split("|") + ["", "", ""])[:4]
    if not boot or host != socket.gethostname() or boot != _boot_id() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's
        return False
    return False


def describe(owner: str, claimed_at: float) -> str:
    """'pid 123 on host h, seen 4 s ago' -- for messages."""
    host, _, pid, *_ = (owner.split("|") + ["", "", ""])[:4]
    return f"pid {pid} on {host}, seen {max(0.0, time.time() - claimed_at):.0f} s ago"


class LeaseHeld(RuntimeError):
    """Another live process holds the lease; ``holder`` says who (:func:`describe`)."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"{name} is held by {holder}")
        self.name, self.holder = name, holder


def _take(ws: Workspace, name: str, owner: str, stale_after_s: float) -> None:
    with ws.store() as s:
        if not s.claim_lease(name, owner, stale_after_s=stale_after_s, is_dead=known_dead):
            held = s.lease_holder(name)
            raise LeaseHeld(name, describe(held.owner, held.claimed_at) if held else "another process")


def _beat(ws: Workspace, name: str, owner: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_REFRESH_S):
        try:
            with ws.store() as s:
                if not s.refresh_lease(name, owner):
                    log.warning("lost %s (not refreshed for %.0f s: another process took it over)", name,
                                LEASE_STALE_S)
        except Exception as e:  # a store hiccup: the next beat tries again
            log.warning("could not refresh %s: %s: %s", name, type(e).__name__, e)


@contextmanager
def lease(ws: Workspace, name: str, *, stale_after_s: float = LEASE_STALE_S) -> Iterator[str]:
    """Hold ``name`` for the block (yields the owner id); :class:`LeaseHeld` when another live process holds it."""
    owner = owner_id(name)
    _take(ws, name, owner, stale_after_s)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(ws, name, owner, stop), name=f"lease {name}", daemon=True)
    beat.start()
    try:
        yield owner
    finally:
        stop.set()
        beat.join(timeout=5)
        try:
            with ws.store() as s:
                s.release_lease(name, owner)
        except Exception as e:  # it goes stale and is taken over
            log.warning("could not release %s: %s: %s", name, type(e).__name__, e)
