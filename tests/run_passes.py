"""`make test`: the whole suite on SQLite and on PostgreSQL -- the two passes side by side, then the tests marked
``alone`` one pass at a time.  Extra arguments go to every pytest (``python tests/run_passes.py -x``).

Why side by side: one pass keeps about 1.2 of the CI machine's 2 cores busy (62 % of both, sampled from
/proc/stat during a pass; the rest is waiting on subprocesses, servers and the database), and the two passes ran
one after the other in about 27 + 26 minutes.  Why some tests run alone: a Ray cluster, a real LLM server or an
example's own servers start several processes against start-up deadlines (Ray Serve's proxy has 60 s, hard-coded)
and two Ray clusters on one machine can pick the same ports (ray-project/ray#53906), so those modules never share
the machine with a pass.  In that phase the Ray tests run first and the others after them in the same process:
a run that ended right after its Ray tests was once killed by SIGSEGV at interpreter exit, every test passed
(Ray's driver threads at shutdown; 1 run in 4 here), and in one long pass they always had minutes of other tests
after them.  ``PYTHONFAULTHANDLER`` is set so that a crash prints where it happened.

Each line of output is prefixed with its pass; the exit status is the first failing pass's (0 when all pass).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSES = (("sqlite", {}), ("postgresql", {"FLYWHEEL_TEST_STORE": "postgresql"}))
RAY_FIRST = ("test_predict_ray.py", "test_serve_ray.py")


def alone_order(extra: list[str]) -> list[str]:
    """The test files in the order the alone phase runs them (Ray first), unless the caller named tests."""
    if any(not a.startswith("-") for a in extra):
        return []
    files = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    return [f"tests/{f}" for f in (*RAY_FIRST, *(f for f in files if f not in RAY_FIRST))]


def pytest(label: str, env: dict[str, str], args: list[str], codes: dict[str, int]) -> None:
    """One pytest run, its output streamed line by line under ``[label]``; its exit status into ``codes``."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(f"[{label}] {line}")
        sys.stdout.flush()
    codes[label] = proc.wait()


def main(extra: list[str]) -> int:
    codes: dict[str, int] = {}
    threads = [threading.Thread(target=pytest, args=(name, env, ["-m", "not alone", *extra], codes))
               for name, env in PASSES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, env in PASSES:
        pytest(f"{name}, alone", env, ["-m", "alone", *extra, *alone_order(extra)], codes)
    print("passes:", ", ".join(f"{k} exit {v}" for k, v in codes.items()), flush=True)
    return next((v for v in codes.values() if v != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
