"""Claims: which process is buying one teacher answer right now, so that two processes never pay for the same call.

Why in the store: processes that share a workspace meet nowhere else -- Ray Serve replicas answering the same new
content (``served_teacher_claims``, per content) and labelling runs over the same items (``teacher_call_claims``,
per content and pass: `flywheel label` started twice, the wheel beside a notebook, two machines on one PostgreSQL
store), and ``leases``: what only one process may run at a time (the wheel on a dataset).  The first to insert a
key's row buys (or runs); the others read the stored answer when it lands.  A claim is
refreshed while its call runs and deleted after the answer is stored, so one older than ``stale_after_s`` belongs
to a process that died and is taken over (compare-and-set: only one taker wins), as is one whose owner the caller's
``is_dead`` says is gone -- in the same transaction, so no claim is released or taken between the look and the
take.  Plain SQL that SQLite and PostgreSQL both run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_CHUNK = 900  # SQLite's default limit on bound parameters is 999

_SERVED = ("served_teacher_claims", ("content_hash", "model", "prompt_version"))
_CALLS = ("teacher_call_claims", ("content_hash", "model", "prompt_version", "pass_index"))
_LEASES = ("leases", ("name",))


@dataclass(frozen=True)
class CallClaim:
    """Who holds a claim (a labelling call, a lease), and when it was last refreshed (``time.time()``)."""

    owner: str
    claimed_at: float


class ClaimQueries:
    """Mixed into :class:`llm_flywheel.store.Store`; uses its ``execute`` / ``query`` / ``transaction``."""

    def _claim(self, table: tuple[str, tuple[str, ...]], key: tuple[object, ...], owner: str, stale_after_s: float,
               is_dead: Callable[[str], bool] | None = None) -> bool:
        name, cols = table
        where = " AND ".join(f"{c}=?" for c in cols)
        now = time.time()
        with self.transaction() as c:  # type: ignore[attr-defined]
            c.execute(f"INSERT INTO {name}({', '.join(cols)}, owner, claimed_at) VALUES({', '.join('?' * (len(cols) + 2))}) "
                      f"ON CONFLICT({', '.join(cols)}) DO NOTHING", (*key, owner, now))
            cur = c.execute(f"UPDATE {name} SET owner=?, claimed_at=? WHERE {where} AND (owner=? OR claimed_at < ?)",
                            (owner, now, *key, owner, now - stale_after_s))
            if int(cur.rowcount) == 1 or is_dead is None:
                return int(cur.rowcount) == 1
            held = c.execute(f"SELECT owner FROM {name} WHERE {where}", key).fetchone()
            if held is None or not is_dead(held[0]):
                return False
            cur = c.execute(f"UPDATE {name} SET owner=?, claimed_at=? WHERE {where} AND owner=?",
                            (owner, now, *key, held[0]))
            return int(cur.rowcount) == 1

    def _release(self, table: tuple[str, tuple[str, ...]], key: tuple[object, ...], owner: str) -> None:
        name, cols = table
        self.execute(f"DELETE FROM {name} WHERE {' AND '.join(f'{c}=?' for c in cols)} AND owner=?",  # type: ignore[attr-defined]
                     (*key, owner))

    # -- serving: one claim per (content, teacher, prompt) across every serving process ------------------------
    def claim_teacher_purchase(self, content_hash: str, model: str, prompt_version: str, owner: str, *,
                               stale_after_s: float, is_dead: Callable[[str], bool] | None = None) -> bool:
        """True when ``owner`` holds the claim now (new, already its own, taken over from a stale one or from an
        owner ``is_dead`` says is gone)."""
        return self._claim(_SERVED, (content_hash, model, prompt_version), owner, stale_after_s, is_dead)

    def refresh_teacher_claim(self, content_hash: str, model: str, prompt_version: str, owner: str) -> bool:
        """Keep a claim fresh while its call runs; False when it is no longer ``owner``'s."""
        cur = self.execute(  # type: ignore[attr-defined]
            "UPDATE served_teacher_claims SET claimed_at=? WHERE content_hash=? AND model=? AND prompt_version=? "
            "AND owner=?", (time.time(), content_hash, model, prompt_version, owner))
        return int(cur.rowcount) == 1

    def release_teacher_claim(self, content_hash: str, model: str, prompt_version: str, owner: str) -> None:
        """Drop ``owner``'s claim (after its answer is stored, or after the call failed so another may try)."""
        self._release(_SERVED, (content_hash, model, prompt_version), owner)

    # -- labelling: one claim per (content, teacher, prompt, pass) across every labelling run ------------------
    def claim_teacher_call(self, content_hash: str, model: str, prompt_version: str, pass_index: int, owner: str, *,
                           stale_after_s: float, is_dead: Callable[[str], bool] | None = None) -> bool:
        """True when ``owner`` holds the call's claim now (new, already its own, taken over from a stale one or
        from an owner ``is_dead`` says is gone)."""
        return self._claim(_CALLS, (content_hash, model, prompt_version, pass_index), owner, stale_after_s, is_dead)

    def claim_teacher_calls(self, model: str, prompt_version: str, keys: Sequence[tuple[str, int]], owner: str, *,
                            stale_after_s: float,
                            is_dead: Callable[[str], bool] | None = None) -> set[tuple[str, int]]:
        """Claim many calls at once (a batch run recording a submission of up to 50,000 lines); returns the
        (content hash, pass) keys ``owner`` holds.  Free keys are inserted in one statement; a key another owner
        holds is taken over only as :meth:`claim_teacher_call` would (stale, or its owner gone)."""
        now, uniq = time.time(), sorted(set(keys))
        with self.transaction() as c:  # type: ignore[attr-defined]
            c.executemany("INSERT INTO teacher_call_claims(content_hash, model, prompt_version, pass_index, owner, "
                          "claimed_at) VALUES (?,?,?,?,?,?) ON CONFLICT(content_hash, model, prompt_version, "
                          "pass_index) DO NOTHING", [(h, model, prompt_version, p, owner, now) for h, p in uniq])
        held = self.teacher_call_claims(model, prompt_version, [h for h, _ in uniq])
        mine = {k for k in uniq if k in held and held[k].owner == owner}
        mine |= {k for k in uniq if k not in mine and self.claim_teacher_call(
            k[0], model, prompt_version, k[1], owner, stale_after_s=stale_after_s, is_dead=is_dead)}
        return mine

    def release_teacher_call_claim(self, content_hash: str, model: str, prompt_version: str, pass_index: int,
                                   owner: str) -> None:
        """Drop ``owner``'s claim: after the answer is stored, or after the call failed so another run may try."""
        self._release(_CALLS, (content_hash, model, prompt_version, pass_index), owner)

    def refresh_teacher_call_claims(self, owner: str) -> int:
        """Keep every claim of ``owner`` fresh in one statement (a run's heartbeat); how many it holds."""
        cur = self.execute("UPDATE teacher_call_claims SET claimed_at=? WHERE owner=?",  # type: ignore[attr-defined]
                           (time.time(), owner))
        return int(cur.rowcount)

    def release_teacher_call_claims(self, owner: str) -> None:
        """Drop every claim of ``owner`` (the end of its run, however it ended)."""
        self.execute("DELETE FROM teacher_call_claims WHERE owner=?", (owner,))  # type: ignore[attr-defined]

    def teacher_call_claims(self, model: str, prompt_version: str,
                            content_hashes: Sequence[str]) -> dict[tuple[str, int], CallClaim]:
        """(content hash, pass) -> its claim, for the claimed calls among ``content_hashes``."""
        out: dict[tuple[str, int], CallClaim] = {}
        uniq = sorted(set(content_hashes))
        for i in range(0, len(uniq), _CHUNK):
            part = uniq[i:i + _CHUNK]
            rows = self.query(  # type: ignore[attr-defined]
                "SELECT content_hash, pass_index, owner, claimed_at FROM teacher_call_claims WHERE model=? AND "
                f"prompt_version=? AND content_hash IN ({','.join('?' * len(part))})", (model, prompt_version, *part))
            for r in rows:
                out[(r["content_hash"], int(r["pass_index"]))] = CallClaim(r["owner"], float(r["claimed_at"]))
        return out

    # -- leases: one holder per name (the wheel on a dataset) ---------------------------------------------------
    def claim_lease(self, name: str, owner: str, *, stale_after_s: float,
                    is_dead: Callable[[str], bool] | None = None) -> bool:
        """True when ``owner`` holds the lease now (new, already its own, stale, or of an owner ``is_dead`` says is
        gone)."""
        return self._claim(_LEASES, (name,), owner, stale_after_s, is_dead)

    def refresh_lease(self, name: str, owner: str) -> bool:
        """The holder's heartbeat; False when the lease is no longer ``owner``'s (it went stale and was taken)."""
        cur = self.execute("UPDATE leases SET claimed_at=? WHERE name=? AND owner=?",  # type: ignore[attr-defined]
                           (time.time(), name, owner))
        return int(cur.rowcount) == 1

    def release_lease(self, name: str, owner: str) -> None:
        self._release(_LEASES, (name,), owner)

    def lease_holder(self, name: str) -> CallClaim | None:
        rows = self.query("SELECT owner, claimed_at FROM leases WHERE name=?", (name,))  # type: ignore[attr-defined]
        return CallClaim(rows[0]["owner"], float(rows[0]["claimed_at"])) if rows else None
