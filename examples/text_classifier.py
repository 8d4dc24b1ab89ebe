"""Text, in memory: an LLM labels support tickets, a TF-IDF student learns them, a calibrated cascade answers.

    python examples/text_classifier.py                      # SIMULATED teacher (offline, no key)
    FLYWHEEL_TEACHER=openrouter:google/gemini-2.5-flash python examples/text_classifier.py   # a real LLM

Notebook-style: each ``# %%`` cell can be pasted into Jupyter.  With the simulated teacher, the correct topics
(``y``) go to the simulator only -- it plays an LLM that is right about 90 % of the time -- never to the classifier.
"""

# %% data: 600 unlabelled tickets (the topics are only used to simulate the teacher and to score at the end)
import os
import tempfile

import numpy as np

import llm_flywheel as fw
from _data import tickets

texts, topics = tickets(600, seed=1)
train, new = texts[:450], texts[450:]
labels = {
    "billing": "invoices, payments, refunds, prices",
    "hardware": "a device is broken: printer, laptop, screen, keyboard, battery",
    "account": "logging in, passwords, usernames, two-factor codes",
}

# %% the teacher: a real LLM when FLYWHEEL_TEACHER names one, else the simulated one
spec = os.environ.get("FLYWHEEL_TEACHER")
teacher = fw.teacher(spec) if spec else fw.simulated_teacher(texts, topics, accuracy=0.9)  # .close() stops it

# %% label -> train -> calibrate, in one fit (answers are cached in the workspace: a re-fit costs nothing)
workspace = os.environ.get("FLYWHEEL_EXAMPLE_WORKSPACE") or tempfile.mkdtemp(prefix="flywheel-example-")
clf = fw.DistilledClassifier(teacher=teacher, labels=labels, student="text-tfidf",
                             instructions="Classify this IT support ticket by topic.",
                             passes=2, budget_usd=1.0, max_teacher_fraction=0.2, workspace=workspace)
clf.fit(train)
rep = clf.label_report_
print(f"teacher: {rep.teacher_model}{' (SIMULATED)' if rep.simulated else ''}: {rep.calls_made} calls, "
      f"${rep.cost_usd:.4f}, {rep.labelled} of {rep.items} tickets labelled, {rep.disagreed} disagreements queued")
cal = clf.calibration_
print(f"cascade: threshold {cal.threshold:.3f} (T = {cal.temperature:.2f}), about {cal.teacher_fraction:.0%} "
      f"of tickets go to the teacher; ECE {cal.ece_before:.3f} -> {cal.ece_after:.3f}")

# %% predict new tickets: the student answers when confident, the teacher otherwise
answers = clf.predict_answers(new)
for text, a in list(zip(new, answers))[:5]:
    print(f"  {a.label:9s} by {a.source:7s} (confidence {a.confidence:.2f})  {text}")
pred = np.array([a.label for a in answers])
asked = np.mean([a.source != "student" for a in answers])
print(f"{len(new)} new tickets: {asked:.0%} sent to the teacher; accuracy vs the true topics "
      f"{np.mean(pred == np.array(topics[450:])):.1%}")

# %% it is a scikit-learn classifier: predict / predict_proba / classes_
print("classes:", list(clf.classes_))
print("P(topic) for the first new ticket:", np.round(clf.predict_proba(new[:1])[0], 3))
again = fw.DistilledClassifier(**clf.get_params()).fit(train)
print(f"refit on the same tickets: {again.label_report_.calls_made} new teacher calls (all cached)")

# %% done: stop the simulated server (a real teacher needs no closing)
if not spec:
    teacher.close()
