"""The README's Python section runs as written: every ```python block of its "## Python" section, executed in
order in one namespace (like a notebook), offline, in a folder holding the tickets.csv and tickets.toml it uses."""

from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _data import tickets  # noqa: E402


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def toml_block(markdown: str, name: str) -> str | None:
    for block in re.findall(r"^```toml\n(.*?)^```", markdown, flags=re.S | re.M):
        if block.startswith(f"# {name}"):
            return block
    return None


def python_section(readme: str) -> str:
    """README.md from its "## Python" heading to the next "## " heading ("" when there is none)."""
    m = re.search(r"^## Python\b.*?(?=^## |\Z)", readme, flags=re.S | re.M)
    return m.group(0) if m else ""


def sources() -> list[tuple[str, str]]:
    return [("README.md#python", python_section((ROOT / "README.md").read_text()))]


def test_the_extractor_finds_blocks():
    md = "## Python\ntext\n```python\nx = 1\n```\n```toml\n# a.toml\nk = 1\n```\n## Next\n```python\ny\n```\n"
    assert python_blocks(python_section(md)) == ["x = 1\n"]
    assert toml_block(md, "a.toml") == "# a.toml\nk = 1\n"
    assert python_section("# Title\nno python here\n") == ""


@pytest.mark.slow
@pytest.mark.parametrize("name,markdown", sources(), ids=[n for n, _ in sources()])
def test_python_blocks_run(name, markdown, tmp_path, monkeypatch):
    blocks = python_blocks(markdown)
    assert blocks, f"{name} has no python blocks"
    texts, topics = tickets(1200, seed=11)
    with open(tmp_path / "tickets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, topics))
    task = toml_block(markdown, "tickets.toml")
    assert task, f"{name} has no ```toml block starting with '# tickets.toml'"
    (tmp_path / "tickets.toml").write_text(task)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)  # the blocks must not need (or spend) a real key
    namespace: dict = {"__name__": "__doc__"}
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{name} python block {i}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{name}: python block {i} failed: {type(e).__name__}: {e}\n{block}") from e
    assert (tmp_path / "ws" / "models").is_dir()
    assert not os.environ.get("FLYWHEEL_TEACHER")
