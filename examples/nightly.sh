#!/bin/bash
# The production loop as a nightly job, CLI only, every flag default: a first wheel, then two days of traffic served
# by `flywheel serve` (made-up tickets, simulated teacher), each followed by one command that imports what was served
# and turns the wheel again.  Prints what each night did; `flywheel report` shows the nights side by side.
#
#   bash examples/nightly.sh            # about 1 minute on 2 cores; FLYWHEEL=... to use another install
#   RUN_FLAGS="--first-round random" bash examples/nightly.sh   # extra flags for the nightly runs
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
FW=${FLYWHEEL:-$HERE/../.venv/bin/flywheel}
PY=${PYTHON:-$HERE/../.venv/bin/python}
PORT=${PORT:-8767}
D=$(mktemp -d); cd "$D"; echo "working in $D"
"$PY" - "$HERE" <<'PY'
import csv, sys
sys.path.insert(0, sys.argv[1])
from _data import tickets
t, y = tickets(400, seed=5)
with open("tickets.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["text", "label"]); w.writerows(zip(t, y))
for day, seed in ((1, 81), (2, 82)):
    open(f"day{day}.txt", "w").write("\n".join(tickets(80, seed=seed)[0]) + "\n")
PY
"$FW" data add text tickets.csv --no-progress | tail -1
echo "--- night 0: the first wheel"
"$FW" run tickets --teacher simulated --rounds 1 --no-progress > night0.log 2>&1
grep "agreement with teacher labels on val" night0.log
for day in 1 2; do
  echo "--- day $day: 80 tickets to flywheel serve (at most 50 teacher calls a day)"
  "$FW" serve tickets --port "$PORT" --teacher simulated --teacher-max-calls 50 > "serve$day.log" 2>&1 &
  "$PY" - "$PORT" "day$day.txt" <<'PY'
import collections, json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):  # the service loads its model first: /readyz says when
    try:
        urllib.request.urlopen(f"{url}/readyz", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
sources = collections.Counter()
for line in open(sys.argv[2]).read().splitlines():
    req = urllib.request.Request(f"{url}/v1/predict", data=line.encode(), headers={"Content-Type": "text/plain"})
    sources[json.load(urllib.request.urlopen(req, timeout=60))["source"]] += 1
print("  answered by:", dict(sources))
PY
  kill %1; wait || true
  echo "--- night $day: flywheel run --add-served all"
  "$FW" run tickets --teacher simulated --rounds 1 --add-served all --no-progress ${RUN_FLAGS:-} > "night$day.log" 2>&1
  grep -A2 "^served traffic" "night$day.log" | tr -s ' \n' ' '; echo
  grep "agreement with teacher labels on val" "night$day.log"
done
"$FW" models tickets
"$PY" - <<'PY'
import json
s = json.load(open("flywheel-workspace/reports/summary.json"))
print("run  labels  served added  teacher calls  teacher $  student (gold test)  stream to teacher")
for r in s["run_history"]:
    print(f"{r['run_id']:>3}  {r['labels']:>6}  {r['served_added'] or 0:>12}  {r['teacher_calls']:>13}  "
          f"{r['teacher_cost_usd']:>9.4f}  {100 * r['student_accuracy']:>18.1f} %  {100 * r['teacher_fraction']:>15.1f} %")
PY
echo "report: $D/flywheel-workspace/reports/index.html"
