"""Texts in a script without spaces (Chinese): ``text-tfidf`` reads characters, and a dataset mostly in another
script than Latin gets it by default, saying why (``core.scripts``, ``students.registry.default_candidates``);
English texts train both text students and keep the one val prefers."""

from __future__ import annotations

import json
import random

import numpy as np
from click.testing import CliRunner

from llm_flywheel.core.scripts import non_latin_share
from llm_flywheel.core.task import Task
from llm_flywheel.interfaces.cli import main
from llm_flywheel.store.records import Item
from llm_flywheel.students.registry import build_student, default_candidates

FILLER = ("的了在是我有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么"
          "心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长")
TOPICS = {"printer": "打印机卡纸", "password": "密码忘记了", "invoice": "发票金额错"}


def tickets(n: int, seed: int) -> list[tuple[str, str]]:
    """Chinese 'tickets': random characters around a topic phrase, no spaces -- a word tokenizer sees one token."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        left, right = ("".join(rng.choices(FILLER, k=rng.randint(4, 12))) for _ in range(2))
        out.append((f"{left}{TOPICS[label]}{right}。", label))
    return out


def as_items(pairs):
    return [Item(i, "t", str(i), str(i), "text", None, t, None, None, None, lab) for i, (t, lab) in enumerate(pairs)]


def test_non_latin_share_names_the_script():
    assert non_latin_share(["Printer jammed again", "Reset my password"]) == (0.0, None)
    share, script = non_latin_share([t for t, _ in tickets(20, 0)])
    assert share == 1.0 and script == "CJK"
    share, script = non_latin_share(["Привет мир", "hello"])
    assert 0.6 < share < 0.7 and script == "CYRILLIC"
    assert non_latin_share(["12345 !!!", ""]) == (0.0, None)


def test_text_tfidf_reads_characters_where_words_have_no_spaces():
    """The earlier word-only student (``analyzer='word'``) sees each unsegmented ticket as one unknown token and
    guesses; the default (words + characters) reads the topic phrase."""
    labels = tuple(TOPICS)
    task = Task(name="t", modality="text", labels=labels)
    train, val, test = as_items(tickets(150, 1)), as_items(tickets(60, 2)), as_items(tickets(90, 3))
    y = {id(it): labels.index(it.gold_label) for it in train + val + test}

    def acc(**hp):
        st = build_student("text-tfidf", task, None, **hp)
        st.fit(train, np.array([y[id(i)] for i in train]), val, np.array([y[id(i)] for i in val]))
        assert st.meta()["hparams"]["analyzer"] == hp.get("analyzer", "word+char")
        return float((st.predict_proba(test).argmax(1) == np.array([y[id(i)] for i in test])).mean())

    assert acc() > 0.95
    assert acc(analyzer="word") < 0.6


def test_a_chinese_dataset_trains_text_tfidf_by_default_and_says_why(tmp_path):
    """Labelled in Chinese too: the labels are kept as written (they used to have no ASCII letter left and the CSV
    read as unlabelled), the teacher's answers match them, and the report's plots number them where no font
    draws them, naming them in the caption."""
    zh = {"printer": "打印机", "password": "密码", "invoice": "发票"}
    rows = tickets(240, 4)
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(f"{t},{zh[lab]}" for t, lab in rows) + "\n",
                                    encoding="utf-8")
    ws = str(tmp_path / "ws")

    def cli(*args):
        r = CliRunner().invoke(main, ["--workspace", ws, *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return " ".join(r.output.split())

    cli("data", "add", "text", str(tmp_path / "t.csv"), "--name", "zh", "--no-progress")
    out = cli("run", "zh", "--simulated", "--rounds", "1", "--no-progress")
    assert "student: text-tfidf -- 100% of the letters are not Latin (mostly CJK)" in out
    from llm_flywheel.store.workspace import Workspace

    with Workspace.open(tmp_path / "ws").store() as s:
        version = s.serving_version("zh", promoted_only=True)
        metrics = json.loads(s.model(version)["metrics_json"])
        task = Task.from_json(s.dataset_task_json("zh"))
        labels = s.effective_labels("zh")
    assert version.startswith("zh-text-tfidf-")
    assert metrics["student_choice"].startswith("100% of the letters are not Latin (mostly CJK): text-tfidf")
    assert set(task.labels) == set(zh.values())
    assert set(labels.values()) == set(zh.values()) and len(labels) > 100  # the teacher's answers matched them
    cli("report", "zh")
    from llm_flywheel.interfaces.report.plots import tick_labels

    page = (tmp_path / "ws" / "reports" / "index.html").read_text(encoding="utf-8")
    key = tick_labels(task.labels)[1]
    assert key is None or f"(classes: {key})" in page
    out = cli("evaluate", "zh")  # its own confusion.png says the same, on the terminal
    assert key is None or f"(classes: {key})" in out
    en = Task(name="en", modality="text", labels=("a", "b"))
    assert default_candidates(en, ["Printer jammed", "Reset my password"]) == (("text-minilm", "text-tfidf"), None)


def test_english_texts_train_both_text_students_and_keep_the_one_val_prefers(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
    from _data import tickets as english_tickets

    from llm_flywheel.pipeline.training import train_student
    from llm_flywheel.store.workspace import Workspace

    texts, topics = english_tickets(260, seed=3)
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in zip(texts, topics)) + "\n",
                                    encoding="utf-8")
    ws = str(tmp_path / "ws")
    for args in (["data", "add", "text", str(tmp_path / "t.csv"), "--name", "en", "--no-progress"],
                 ["label", "en", "--simulated", "--no-progress"]):
        r = CliRunner().invoke(main, ["--workspace", ws, *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    tm = train_student(Workspace.open(ws), "en", progress=False)
    choice = tm.metrics["student_choice"]
    scores = dict(part.rsplit(" ", 1) for part in choice.removeprefix("chosen on val: ").split(", "))
    assert set(scores) == {"text-minilm", "text-tfidf"}
    best = max(scores, key=lambda k: (float(scores[k].rstrip("%")), k == "text-minilm"))
    assert tm.student.kind == best and tm.version.startswith(f"en-{best}-")
    assert f"{tm.metrics['val_acc']:.1%}" == scores[best]
    cands = tm.metrics["candidates"]  # the contest's whole cost: each kind's fitting time, not only the kept one's
    assert [c["kind"] for c in cands] == ["text-minilm", "text-tfidf"]
    assert [c["kept"] for c in cands] == [c["kind"] == best for c in cands]
    assert all(c["seconds"] > 0 and f"{c['val_acc']:.1%}" == scores[c["kind"]] for c in cands)


def test_labels_in_any_script_keep_their_letters():
    from llm_flywheel.core.task import normalise_label, valid_label
    from llm_flywheel.interfaces.api.simulate import label_names
    from llm_flywheel.teachers.parsing import LabelMatcher

    assert normalise_label("Sweet Pepper") == "sweet_pepper" and normalise_label("T-Shirt / Top") == "t_shirt_top"
    assert normalise_label(" 打印机 ") == "打印机" and normalise_label("हिन्दी") == "हिन्दी"  # marks stay in the word
    assert normalise_label("Cre\u0300me Bru\u0302le\u0301e") == normalise_label("Crème Brûlée") == "crème_brûlée"
    assert valid_label("打印机") and valid_label("a_") and not valid_label("_a") and not valid_label("Ψυχή")
    assert label_names(["垃圾邮件", "正常"]) == {"垃圾邮件": "垃圾邮件", "正常": "正常"}
    m = LabelMatcher(("打印机", "密码"))
    assert m.match("打印机") == "打印机" and m.match(" 密码。") == "密码" and m.match("发票") is None
