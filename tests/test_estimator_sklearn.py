"""scikit-learn's own estimator checks on DistilledClassifier, taught by the REAL simulated teacher.

The checks call ``fit(X, y)``.  A teacher-labelled classifier takes no ``y``, so the checks run on a subclass whose
``fit`` hands ``y`` to a simulated OpenAI-compatible server on 127.0.0.1 (the gold it answers from, right 97 % of
the time) and then fits the real estimator on ``X`` alone, with the class list taken from ``y`` -- exactly what a
user does who knows the label set and has an LLM that knows the answers.  No check is skipped or expected to fail.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np
import pytest

# The estimator keeps its own temporary SQLite workspace whatever FLYWHEEL_STORE says (so a pickle carries it whole):
# these checks run the same code on both passes, so the PostgreSQL pass skips them.
pytestmark = pytest.mark.sqlite_only
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

import llm_flywheel as fw
from llm_flywheel.interfaces.api.estimator import DistilledClassifier

_SERVERS: "weakref.WeakKeyDictionary[DistilledClassifier, contextlib.ExitStack]" = weakref.WeakKeyDictionary()


class TaughtDistilledClassifier(DistilledClassifier):
    """``fit(X, y)``: ``y`` goes to the simulated teacher only; the estimator is fitted on ``X``."""

    def fit(self, X, y=None):
        if y is None:
            return super().fit(X)
        modality, items = self._fit_inputs(X)  # the estimator's own input validation comes first
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        old = _SERVERS.pop(self, None)
        if old is not None:
            old.close()
        stack = contextlib.ExitStack()
        oracle_X = np.asarray(items, dtype=float) if modality == "tabular" else items
        teacher = stack.enter_context(fw.simulated_teacher(oracle_X, y, accuracy=0.97))
        _SERVERS[self] = stack  # the server lives as long as the estimator: predict may defer to it
        weakref.finalize(self, stack.close)
        return self._fit(X, teacher, np.unique(y).tolist())


@pytest.mark.slow
@parametrize_with_checks([TaughtDistilledClassifier(student="tabular-hgb", max_teacher_fraction=0.3)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_the_checks_ran_on_the_real_fit_path():
    """The subclass only adds the simulator: fitting it once trains and calibrates like DistilledClassifier.fit."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3))
    y = np.where(X[:, 0] > 0, "up", "down")
    est = TaughtDistilledClassifier(student="tabular-hgb").fit(X, y)
    assert est.label_report_.simulated and est.label_report_.calls_made > 0
    assert est.classes_.tolist() == ["down", "up"] and np.mean(est.predict(X) == y) > 0.8
    assert type(est).fit is not DistilledClassifier.fit and type(est)._fit is DistilledClassifier._fit
