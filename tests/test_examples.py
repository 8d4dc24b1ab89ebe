"""Every example in examples/ runs as written, offline, against the simulated teacher (the default)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# each example starts its own servers (flywheel serve, the simulated teacher) against start-up deadlines, and they run
# after the Ray tests in the same process (tests/run_passes.py says why)
pytestmark = pytest.mark.alone
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_TEACHER"}
    env["FLYWHEEL_EXAMPLE_WORKSPACE"] = str(tmp_path / "ws")
    env["TMPDIR"] = str(tmp_path)  # temporary workspaces land here, so leftovers would be visible
    p = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, f"{name} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")) == [
        "image_classifier.py", "production_loop.py", "text_classifier.py"]


def test_text_example(tmp_path):
    out = run_example("text_classifier.py", tmp_path)
    assert "(SIMULATED)" in out
    acc = float(re.search(r"accuracy vs the true topics ([\d.]+)%", out).group(1))
    assert acc > 80  # the simulated teacher is right ~90 % of the time; the cascade should not be far below
    assert "refit on the same tickets: 0 new teacher calls" in out
    assert (tmp_path / "ws" / "models").is_dir()


@pytest.mark.slow
def test_image_example(tmp_path):
    out = run_example("image_classifier.py", tmp_path)
    assert "(SIMULATED)" in out
    acc = float(re.search(r"accuracy vs the true shapes ([\d.]+)%", out).group(1))
    assert acc > 70
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("flywheel-")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


def test_production_loop_example(tmp_path):
    """Serve (its own process, a call cap), batch traffic, add_served, a second round that trains on it."""
    out = run_example("production_loop.py", tmp_path)
    served = re.search(r"served 120 new tickets: .*teacher answers bought by serving: (\d+) \(cap 20\)", out)
    assert served and 1 <= int(served.group(1)) <= 20, out
    imp = re.search(r"add_served: (\d+) tickets added to train, (\d+) labelled from serving's answers, (\d+) teacher "
                    r"calls", out)
    assert imp and int(imp.group(1)) == 120 and int(imp.group(2)) == int(served.group(1)) and imp.group(3) == "0", out
    assert re.search(r"round 2: model \S+, labels \d+, cascade accuracy", out), out


@pytest.mark.slow
def test_nightly_shell_example(tmp_path):
    """examples/nightly.sh: serve, then `flywheel run --add-served all`, twice; a report with the three runs."""
    from ports import free_port

    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_TEACHER"}
    env |= {"TMPDIR": str(tmp_path), "PORT": str(free_port()), "PYTHON": sys.executable,
            "FLYWHEEL": str(Path(sys.executable).parent / "flywheel")}
    p = subprocess.run(["bash", str(EXAMPLES / "nightly.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    out = " ".join(p.stdout.split())
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
    assert out.count("80 added to train") == 2 and out.count("-> promoted") + out.count("-> kept") == 3, out
    assert re.search(r"answered by: \{.*'student': \d+", out), out
    assert len(re.findall(r"^\s*\d+\s+\d+\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+ %", p.stdout, re.M)) == 3, p.stdout
