"""The loop in production: turn the wheel, serve the cascade, bring what it served back, turn the wheel again.

    python examples/production_loop.py                      # SIMULATED teacher (offline, no key)
    FLYWHEEL_TEACHER=openrouter:google/gemini-2.5-flash python examples/production_loop.py   # a real LLM

``flywheel serve`` runs as its own process (as it would in production), with a cap on what it may pay the teacher;
traffic arrives as batch requests; ``ds.add_served`` then adds what it answered to the train split, labelled with
the answers serving already bought, and the next round trains on it.  Each ``# %%`` cell can be pasted into Jupyter.
"""

# %% a dataset: 500 tickets with their true topics (used to simulate the teacher and to measure, never to train)
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx

import llm_flywheel as fw
from _data import tickets

root = os.environ.get("FLYWHEEL_EXAMPLE_WORKSPACE") or tempfile.mkdtemp(prefix="flywheel-example-")
ws = fw.Workspace(root)
texts, topics = tickets(500, seed=2)
ds = ws.add_items("tickets", texts, labels={
    "billing": "invoices, payments, refunds, prices",
    "hardware": "a device is broken: printer, laptop, screen, keyboard, battery",
    "account": "logging in, passwords, usernames, two-factor codes"}, gold=topics)
print("splits:", ds.splits())

spec = os.environ.get("FLYWHEEL_TEACHER")
teacher = fw.teacher(spec) if spec else ds.simulated_teacher(accuracy=0.9)  # .close() stops the simulated one

# %% round 1: label -> train -> calibrate -> promote
run = ds.run(teacher, rounds=1, student_kind="text-tfidf", progress=False)
r1 = run.rounds[-1]
print(f"round 1: model {r1.model_version}, {run.teacher_calls} teacher calls, cascade accuracy "
      f"{r1.cascade_accuracy:.1%} on gold test, {r1.stream_teacher_fraction:.1%} of the stream to the teacher")

# %% serve it: its own process on loopback, at most 20 teacher answers a day
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
flywheel = os.path.join(os.path.dirname(sys.executable), "flywheel")
server = subprocess.Popen([flywheel, "-w", root, "serve", "tickets", "--port", str(port), "--teacher", teacher.spec,
                           *(["--api-key-env", teacher.api_key_env] if teacher.api_key_env is not None else []),
                           "--teacher-max-calls", "20", "--deadline", "20"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
url = f"http://127.0.0.1:{port}"
for _ in range(240):
    try:
        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
else:
    raise SystemExit("flywheel serve did not start")

# %% production traffic: 120 new tickets in batches of 40
new, new_topics = tickets(120, seed=99)
sources: dict[str, int] = {}
right = 0
for i in range(0, len(new), 40):
    got = httpx.post(f"{url}/v1/predict/batch", json={"inputs": [{"text": t} for t in new[i:i + 40]]},
                     timeout=120).json()["results"]
    for res, truth in zip(got, new_topics[i:i + 40]):
        sources[res["source"]] = sources.get(res["source"], 0) + 1
        right += res["label"] == truth
cap = httpx.get(f"{url}/readyz").json()["teacher"]["spend_cap"]
server.terminate()
server.wait(60)
print(f"served {len(new)} new tickets: {sources}; accuracy vs the true topics {right / len(new):.1%}; "
      f"teacher answers bought by serving: {cap['calls']} (cap {cap['max_calls']})")

# %% bring it back: the served tickets join train, labelled with the answers serving bought (no teacher call)
imp = ds.add_served(teacher)
print(f"add_served: {imp.added} tickets added to train, {imp.answers_adopted} labelled from serving's answers, "
      f"{imp.teacher_calls} teacher calls")

# %% round 2 trains on them too
run = ds.run(teacher, rounds=2, student_kind="text-tfidf", progress=False)
r2 = run.rounds[-1]
print(f"round 2: model {r2.model_version}, labels {r2.labels_total}, cascade accuracy {r2.cascade_accuracy:.1%}, "
      f"{r2.stream_teacher_fraction:.1%} of the stream to the teacher")

if not spec:
    teacher.close()
