"""A small table taken through the CLI the way a user would: `data add tabular`, `label --simulated`, `train`,
`calibrate` -- for the tests of what a tabular model is then asked (predict, serve)."""

from __future__ import annotations

import random
from pathlib import Path

from click.testing import CliRunner

from llm_flywheel.interfaces.cli import main


def calibrated_table(tmp_path: Path, n: int = 240) -> Path:
    """Dataset ``t`` (columns ``x``, ``y``; label ``high`` where x + y > 1) in the workspace it returns."""
    rng = random.Random(0)
    lines = [f"{x},{y},{'high' if x + y > 1 else 'low'}" for x, y in ((rng.random(), rng.random()) for _ in range(n))]
    (tmp_path / "t.csv").write_text("x,y,label\n" + "\n".join(lines) + "\n")
    ws = tmp_path / "ws"
    for args in (("data", "add", "tabular", str(tmp_path / "t.csv"), "--no-progress"),
                 ("label", "t", "--simulated", "--no-progress"), ("train", "t", "--no-progress"),
                 ("calibrate", "t", "--max-teacher-fraction", "0.5")):
        r = CliRunner().invoke(main, ["--workspace", str(ws), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return ws
