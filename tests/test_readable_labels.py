"""Labels that are only ids (``0``/``1``, ``label_1``: Hugging Face exports) with no description: the import warns,
a real teacher is refused before any call is paid (the simulated one answers from gold and needs no meaning), and
describing them in a task file, imported again, lets labelling go on."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fault_server import FaultServer
from llm_flywheel.core.task import Task, unreadable_labels
from llm_flywheel.interfaces.cli import main
from llm_flywheel.teachers.errors import TeacherConfigError, require_readable_labels


@pytest.mark.parametrize("labels,descriptions,bare", [
    (("0", "1"), {}, True),
    (("label_0", "label_1", "label_2"), {}, True),
    (("class_1", "class_2"), {"class_1": "class 1", "class_2": "class 2"}, True),
    (("0", "1"), {"0": "negative review", "1": "positive review"}, False),
    (("1", "2", "spam"), {}, False),  # one label carries a word
    (("neg", "pos"), {}, False),
])
def test_which_label_sets_are_only_ids(labels, descriptions, bare):
    t = Task(name="t", modality="text", labels=labels, descriptions=descriptions or {lab: lab for lab in labels})
    assert unreadable_labels(t) == (list(labels) if bare else [])


def test_images_and_the_simulated_teacher_are_not_refused():
    digits = Task(name="d", modality="image", labels=tuple(str(i) for i in range(10)))
    require_readable_labels(digits, simulated=False)  # a folder of handwritten digits named 0-9
    ids = Task(name="t", modality="text", labels=("0", "1"))
    require_readable_labels(ids, simulated=True)
    with pytest.raises(TeacherConfigError, match=r"only ids \(0, 1\) with no description.*--task t\.toml"):
        require_readable_labels(ids, simulated=False)


def test_the_cli_refuses_to_pay_a_teacher_to_guess_and_the_task_file_fixes_it(tmp_path):
    rows = [f"{'great film and loved it' if i % 2 else 'dull and far too long'} ({i}),{i % 2}" for i in range(120)]
    (tmp_path / "sst.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    w = ["--workspace", str(tmp_path / "ws")]
    r = CliRunner().invoke(main, [*w, "data", "add", "text", str(tmp_path / "sst.csv"), "--no-progress"])
    assert r.exit_code == 0 and "WARNING: the labels are only ids (0, 1)" in " ".join(r.output.split())
    with FaultServer() as srv:
        r = CliRunner().invoke(main, [*w, "label", "sst", "--teacher", f"{srv.url}|fault-model", "--no-progress",
                                      "--limit", "4"])
        assert r.exit_code == 2 and "would be paid to guess" in " ".join(r.output.split()), r.output
        assert srv.requests == []  # nothing was asked
        (tmp_path / "sst.toml").write_text('name = "sst"\nmodality = "text"\n[labels]\n0 = "negative: the reviewer '
                                           'disliked the film"\n1 = "positive: the reviewer liked the film"\n')
        r = CliRunner().invoke(main, [*w, "data", "add", "text", str(tmp_path / "sst.csv"), "--task",
                                      str(tmp_path / "sst.toml"), "--no-progress"])
        assert r.exit_code == 0 and "only ids" not in r.output
        r = CliRunner().invoke(main, [*w, "label", "sst", "--teacher", f"{srv.url}|fault-model", "--no-progress",
                                      "--limit", "4"])
        assert srv.requests and "positive: the reviewer liked the film" in str(srv.requests[-1]["body"])
