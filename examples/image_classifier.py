"""Images, in memory: an LLM labels small pictures, a CNN student learns them, a calibrated cascade answers.

    python examples/image_classifier.py                     # SIMULATED teacher (offline, no key)
    FLYWHEEL_TEACHER=openrouter:google/gemini-2.5-flash python examples/image_classifier.py  # a vision LLM

Images are numpy arrays (H x W or H x W x 3, uint8) or PIL images; the teacher sees them as PNG.  With the simulated
teacher the true shapes (``y``) go to the simulator only, never to the classifier.
"""

# %% data: 360 noisy 16x16 pictures of a square, a cross or a ring
import os

import numpy as np

import llm_flywheel as fw
from _data import shapes

images, truth = shapes(360, seed=2)
train, new = images[:280], images[280:]
labels = {"square": "a filled square", "cross": "a plus-shaped cross", "ring": "a ring (an empty circle)"}

# %% teacher: a real vision LLM when FLYWHEEL_TEACHER names one, else the simulated one
spec = os.environ.get("FLYWHEEL_TEACHER")
teacher = fw.teacher(spec) if spec else fw.simulated_teacher(images, truth, accuracy=0.9)  # .close() stops it

# %% label -> train a small CNN -> calibrate (one teacher pass per picture to keep it cheap)
clf = fw.DistilledClassifier(teacher=teacher, labels=labels, student="image-cnn", student_params={"epochs": 4},
                             instructions="Which shape is drawn in this small grayscale picture?",
                             passes=1, budget_usd=0.5, max_teacher_fraction=0.2)
clf.fit(train)
rep = clf.label_report_
print(f"teacher{' (SIMULATED)' if rep.simulated else ''}: {rep.calls_made} calls, ${rep.cost_usd:.4f}; "
      f"cascade threshold {clf.calibration_.threshold:.3f}")

# %% predict new pictures
answers = clf.predict_answers(new)
pred = np.array([a.label for a in answers])
print(f"{len(new)} new pictures: {np.mean([a.source != 'student' for a in answers]):.0%} sent to the teacher, "
      f"accuracy vs the true shapes {np.mean(pred == np.array(truth[280:])):.1%}")
print("first five:", [(a.label, a.source) for a in answers[:5]])

# %% done: stop the simulated server (a real teacher needs no closing)
if not spec:
    teacher.close()
