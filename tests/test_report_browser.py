"""The report in a real browser: Debian's headless chromium, driven over its DevTools protocol (a local websocket).

A small wheel run makes the report; the page must load without console errors or exceptions, every plot must be an
image that decodes (naturalWidth > 0), and the key numbers shown must be the ones in summary.json.  ``make chromium``
installs the browser (apt, no browser download); in CI (``CI=true``) a missing chromium fails instead of skipping.

Also a script: ``python tests/test_report_browser.py REPORT.html OUT.png`` saves a screenshot of the top of a report.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from procs import die_with_parent

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--remote-debugging-port=0", "--remote-allow-origins=*")


def chromium_path() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """One headless chromium with a fresh profile, and one page attached over CDP (flattened session)."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="flywheel-chromium-")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=die_with_parent)
        self.events: list[dict[str, Any]] = []
        self._id = 0

    async def start(self) -> None:
        import websockets

        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {self.proc.stderr.read().decode(errors='replace')[-2000:]}"
                                   if self.proc.poll() is not None else "chromium did not start within 60 s")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
        target = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        self.session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable", session=True)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        await self.ws.send(json.dumps(msg))
        while True:
            m = json.loads(await asyncio.wait_for(self.ws.recv(), 120))
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    async def wait_for(self, event: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.events:
                if m.get("method") == event:
                    return m
            m = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - time.monotonic())))
            self.events.append(m)

    async def open(self, url: str, width: int = 1200, height: int = 900) -> None:
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)
        self.events.clear()
        await self.send("Page.navigate", {"url": url}, session=True)
        await self.wait_for("Page.loadEventFired")

    async def evaluate(self, js: str) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": js, "awaitPromise": True, "returnByValue": True}, session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def screenshot(self) -> bytes:
        import base64

        return base64.b64decode((await self.send("Page.captureScreenshot", {"format": "png"}, session=True))["data"])

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-logged errors (failed loads, CSP, ...) seen so far."""
        out = []
        for m in self.events:
            p = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    async def close(self) -> None:
        try:
            await self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_FACTS = """
(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const rows = t => Array.from(t.querySelectorAll('tr')).map(r => Array.from(r.cells).map(c => c.innerText.trim()));
  return {
    title: document.title,
    images: imgs.map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, complete: i.complete})),
    tables: Array.from(document.querySelectorAll('table')).map(rows),
  };
})()
"""


async def page_facts(exe: str, page: Path) -> tuple[dict[str, Any], list[str]]:
    b = Browser(exe)
    try:
        await b.start()
        await b.open(page.resolve().as_uri())
        facts = await b.evaluate(PAGE_FACTS)
        await asyncio.sleep(0.5)  # late console messages
        await b.send("Runtime.evaluate", {"expression": "1"}, session=True)
        return facts, b.errors()
    finally:
        await b.close()


async def screenshot(exe: str, page: Path, out: Path, width: int = 1200, height: int = 900) -> None:
    b = Browser(exe)
    try:
        await b.start()
        await b.open(page.resolve().as_uri(), width, height)
        await b.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null))).then(() => 1)")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(await b.screenshot())
    finally:
        await b.close()


# -- the test -------------------------------------------------------------------------------------------------


def pct(v: float) -> str:
    """How the report writes an accuracy or a fraction (checked against the page, computed from summary.json)."""
    return f"{100 * v:.1f} %"


def _row(tables: list[list[list[str]]], *words: str) -> list[str]:
    for t in tables:
        for r in t:
            if r and all(w in r[0].lower() for w in words):
                return r
    raise AssertionError(f"no table row labelled with {words}")


@pytest.fixture
def browser_exe() -> str:
    exe = chromium_path()
    if exe is None:
        msg = "chromium is not installed: run `make chromium` (Debian package chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


@pytest.mark.slow  # a small wheel run (~1-2 min on 2 shared cores) makes the report
@pytest.mark.alone
@pytest.mark.not_about_the_store  # Chromium's rendering; the report's store reads run on both stores elsewhere
def test_report_renders_in_chromium_with_the_summary_numbers(ws, synth_task, browser_exe):
    from conftest import make_synth_dataset
    from llm_flywheel.pipeline.flywheel import WheelConfig, run_wheel
    from llm_flywheel.interfaces.report import write_report
    from llm_flywheel.pipeline.splits import SplitSpec, make_splits
    from llm_flywheel.teachers.registry import teacher_from_spec
    from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher

    make_synth_dataset(ws, synth_task, n_train=500, n_test=150, seed=2)
    with ws.store() as s:
        make_splits(s, "synth", SplitSpec(val=60, calib=120, stream=120, seed=0))
    cfg = WheelConfig(rounds=2, seed_labels=40, val_labels=60, calib_labels=120, per_round_budget=150, passes=2,
                      stream_per_round=60, student_kind="image-cnn", epochs=4, target_accuracy=0.8, delta=0.1,
                      audit_rate=0.05, concurrency=8, seed=0, gold_ceiling=True)
    with run_simulated_teacher(ws, "synth", SimConfig(latency_ms=0, rate_429=0.0)) as url:
        teacher = teacher_from_spec(f"{url}|{model_id('synth')}", synth_task, api_key_env="")
        run_wheel(ws, "synth", teacher=teacher, config=cfg, progress=False)
    page = write_report(ws, "synth")
    summary = json.loads((page.parent / "summary.json").read_text())

    facts, errors = asyncio.run(page_facts(browser_exe, page))
    assert errors == [], errors
    assert "synth" in facts["title"]
    n_img = page.read_text().count("<img ")
    assert len(facts["images"]) == n_img >= 5, facts["images"]
    for img in facts["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img  # every plot decodes

    t = facts["tables"]
    assert _row(t, "final student accuracy")[1].startswith(pct(summary["final_student_accuracy"]))
    assert _row(t, "final cascade accuracy")[1].startswith(pct(summary["final_cascade_accuracy"]))
    assert _row(t, "teacher accuracy", "single call")[1].startswith(pct(summary["teacher_accuracy"]))
    assert _row(t, "gold-label ceiling")[1].startswith(pct(summary["gold_ceiling_accuracy"]))
    assert _row(t, "final teacher fraction")[1].startswith(pct(summary["final_teacher_fraction"]))
    # the rounds table: one row per round, the same per-round accuracies and teacher calls
    rounds = next(tb for tb in t if tb and tb[0] and tb[0][0] == "round")
    head = [h.lower() for h in rounds[0]]
    col = {k: next(i for i, h in enumerate(head) if all(w in h for w in words))
           for k, words in (("student_accuracy", ("student acc",)), ("cascade_accuracy", ("cascade acc",)),
                            ("teacher_calls", ("teacher calls",)))}
    assert len(rounds) - 1 == len(summary["rounds"]) == 2
    for row, r in zip(rounds[1:], summary["rounds"]):
        assert row[0] == str(r["round"])
        assert row[col["student_accuracy"]].startswith(pct(r["student_accuracy"]))
        assert row[col["cascade_accuracy"]].startswith(pct(r["cascade_accuracy"]))
        assert row[col["teacher_calls"]] == f"{r['teacher_calls']:,}"


@pytest.mark.alone
@pytest.mark.not_about_the_store  # Chromium's rendering; the report's store reads run on both stores elsewhere
def test_browser_reports_a_broken_image_and_a_script_error(tmp_path, browser_exe):
    """The checks above can fail: a page with a corrupt PNG and a console error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><head><title>bad</title></head><body>"
                   "<img alt=broken src='data:image/png;base64,iVBORw0KGgoAAAAN'>"
                   "<script>console.error('boom')</script></body></html>")
    facts, errors = asyncio.run(page_facts(browser_exe, bad))
    assert facts["images"][0]["w"] == 0
    assert any("boom" in e for e in errors), errors


if __name__ == "__main__":  # python tests/test_report_browser.py REPORT.html OUT.png
    exe = chromium_path()
    if exe is None or len(sys.argv) != 3:
        sys.exit("usage: python tests/test_report_browser.py REPORT.html OUT.png (needs chromium: make chromium)")
    asyncio.run(screenshot(exe, Path(sys.argv[1]), Path(sys.argv[2])))
    print(f"wrote {sys.argv[2]}")
