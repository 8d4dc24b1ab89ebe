"""Task TOML: validation errors say which field is wrong and why; built-in tasks load."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_flywheel.core.task import Task, TaskError, builtin_task, builtin_task_names, load_task

GOOD = '''
name = "fruit"
modality = "image"
instructions = "Classify the fruit."

[labels]
apple = "Apple: round"
sweet_pepper = "Sweet pepper: glossy, lobed"

[prices]
input_per_mtok = 0.30
output_per_mtok = 2.50
'''


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "task.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_good_task_loads_with_descriptions_and_prices(tmp_path):
    t = load_task(write(tmp_path, GOOD))
    assert t.name == "fruit" and t.modality == "image"
    assert t.labels == ("apple", "sweet_pepper")
    assert t.descriptions["sweet_pepper"].startswith("Sweet pepper")
    assert (t.input_per_mtok, t.output_per_mtok) == (0.30, 2.50)
    assert t.index("sweet_pepper") == 1
    assert Task.from_json(t.to_json()) == t


def test_labels_as_list(tmp_path):
    t = load_task(write(tmp_path, 'name = "x"\nmodality = "text"\nlabels = ["spam", "ham"]\n'))
    assert t.labels == ("spam", "ham") and t.descriptions["ham"] == "ham"


@pytest.mark.parametrize("key", ["name", "modality", "labels"])
def test_missing_key_is_named(tmp_path, key):
    lines = {"name": 'name = "x"', "modality": 'modality = "image"', "labels": 'labels = ["a", "b"]'}
    text = "\n".join(v for k, v in lines.items() if k != key) + "\n"
    with pytest.raises(TaskError, match=rf"missing required key '{key}'") as e:
        load_task(write(tmp_path, text))
    assert "task.toml" in str(e.value)  # names the file


@pytest.mark.parametrize(
    "text, pattern",
    [
        ('name = "x"\nmodality = "video"\nlabels = ["a", "b"]\n', r"modality 'video'.*image, text, tabular"),
        ('name = "x"\nmodality = "image"\nlabels = ["a", "b", "a"]\n', r"duplicate label.*'a'"),
        ('name = "x"\nmodality = "image"\nlabels = ["Sweet Pepper", "apple"]\n', r"label 'Sweet Pepper'.*sweet_pepper"),
        ('name = "x"\nmodality = "image"\nlabels = ["Billing issue", "Hardware/Device"]\n',
         r"label 'Billing issue'.*e\.g\. 'billing_issue'"),  # the fix for this label, not a fixed example
        ('name = "x"\nmodality = "image"\nlabels = ["only"]\n', r"at least 2 labels"),
        ('name = "x"\nmodality = "image"\nlabels = 3\n', r"'labels' must be a table"),
        ('name = "x y"\nmodality = "image"\nlabels = ["a", "b"]\n', r"name 'x y'"),
        ('name = "x"\nmodality = "image"\nlabels = ["a", "b"]\ncolour = 1\n', r"unknown key.*colour"),
        ('name = "x"\nmodality = "image"\nlabels = ["a", "b"]\n[prices]\ninput_per_mtok = "cheap"\n',
         r"price 'cheap' is not a number"),
        ('name = "x"\nmodality = "image"\nlabels = ["a", "b"]\n[prices]\ninput_per_mtok = -1\n', r"negative"),
        ('name = "x"\nmodality = "image"\nlabels = ["a", "b"]\n[prices]\nper_call = 1\n', r"input_per_mtok"),
        ('name = "x"\nmodality = "image"\n[labels]\na = "A"\na = "B"\n', r"not valid TOML"),
        ('name = "x\nmodality = "image"\n', r"not valid TOML"),
    ],
)
def test_invalid_task_errors_are_clear(tmp_path, text, pattern):
    with pytest.raises(TaskError, match=pattern):
        load_task(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "nope.toml")


def test_builtin_tasks_load():
    assert {"fashion-mnist", "cifar5"} <= set(builtin_task_names())
    fm = builtin_task("fashion-mnist")
    assert fm.modality == "image" and fm.num_labels == 10
    assert fm.labels[0] == "t_shirt_top" and fm.labels[-1] == "ankle_boot"  # the dataset's own order 0..9
    c5 = builtin_task("cifar5")
    assert c5.labels == ("apple", "mushroom", "orange", "pear", "sweet_pepper")
    for t in (fm, c5):
        assert all(t.descriptions[lab] for lab in t.labels) and t.instructions
        assert t.input_per_mtok is not None and t.output_per_mtok is not None


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(TaskError, match=r"no built-in task 'mnist'.*fashion-mnist"):
        builtin_task("mnist")


def _image_task(tmp_path, augment: str) -> Task:
    p = tmp_path / "t.toml"
    p.write_text('name = "digits"\nmodality = "image"\nlabels = ["d0", "d1"]\n' + augment, encoding="utf-8")
    return load_task(p)


def test_augment_declared_in_the_task_overrides_modality_defaults(tmp_path):
    plain = _image_task(tmp_path, "")
    assert plain.augmentation()["flip"] is False and plain.augmentation()["rotate"] == 0  # no mirror unless allowed
    t = _image_task(tmp_path, "[augment]\nflip = false\nrotate = 5\n")
    assert t.augmentation()["rotate"] == 5 and t.augmentation()["flip"] is False
    assert Task.from_json(t.to_json()).augmentation() == t.augmentation()  # stored with the dataset
    assert builtin_task("fashion-mnist").augmentation()["flip"] is True  # clothes may be mirrored


@pytest.mark.parametrize("augment,pattern", [
    ("[augment]\nmirror = true\n", "unknown key"),
    ("[augment]\nflip = 1\n", "true or false"),
    ("[augment]\nrotate = 400\n", "0 to 180"),
    ("[augment]\nshift = \"a\"\n", "number"),
])
def test_bad_augment_is_named(tmp_path, augment, pattern):
    with pytest.raises(TaskError, match=pattern):
        _image_task(tmp_path, augment)


def test_text_tasks_take_no_augment(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('name = "spam"\nmodality = "text"\nlabels = ["ham", "spam"]\n[augment]\nflip = true\n', encoding="utf-8")
    with pytest.raises(TaskError, match="image tasks only"):
        load_task(p)
