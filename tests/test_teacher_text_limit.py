"""A long text is sent to a teacher cut to ``$FLYWHEEL_TEACHER_TEXT_MAX_CHARS`` (``teachers.texts``): online, in a
Batch API line and at predict time alike, noted on the answer, priced at that length in the plan, and recognised by
the simulated teacher.  Real servers on 127.0.0.1 (a recording FaultServer, the simulated teacher), a real store."""

from __future__ import annotations

import pytest

from fault_server import FaultServer, ok, user_text
from llm_flywheel.core.task import Task
from llm_flywheel.data import Record, register
from llm_flywheel.interfaces.api.results import LabelPlan
from llm_flywheel.pipeline.labeling import LabelConfig, label_items, plan
from llm_flywheel.store.records import Item
from llm_flywheel.teachers.batch import request_line
from llm_flywheel.teachers.errors import TeacherConfigError
from llm_flywheel.teachers.openai_compat import OpenAICompatTeacher, run_sync
from llm_flywheel.teachers.registry import teacher_from_spec
from llm_flywheel.teachers.simulated import SimConfig, model_id, run_simulated_teacher
from llm_flywheel.teachers.texts import TEXT_MAX_CHARS, TEXT_MAX_CHARS_ENV, teacher_text, text_max_chars_from_env

TASK = Task(name="mail", modality="text", labels=("spam", "ham"), instructions="Is this email spam or ham?")
LONG = "Dear customer, you have won a prize. " + "Click the link below to claim it today. " * 1500  # 60,037 chars


def _item(i: int, text: str) -> Item:
    return Item(id=i, dataset="mail", source_ref=str(i), content_hash=f"h{i:04d}", modality="text", blob_path=None,
                text=text, features=None, source_split="train", split="train", gold_label=None)


def test_a_text_is_cut_at_a_word_boundary_to_the_limit_and_said_so():
    assert teacher_text("short mail", 16_000) == ("short mail", None)
    assert teacher_text(LONG, 0) == (LONG, None)  # 0: whole
    cut, note = teacher_text(LONG, 1000)
    assert len(cut) <= 1000 + len(" …[truncated]") and cut.endswith(" …[truncated]")
    assert LONG.startswith(cut.removesuffix(" …[truncated]"))
    assert LONG[len(cut.removesuffix(" …[truncated]"))] == " "  # cut at a word
    assert note is not None and note.startswith("input_truncated") and "60,037" in note and TEXT_MAX_CHARS_ENV in note
    assert teacher_text(LONG, 1000) == (cut, note)  # every pass sends the same text


def test_the_limit_comes_from_the_environment_and_a_bad_value_names_the_variable():
    assert text_max_chars_from_env({}) == TEXT_MAX_CHARS == 16_000
    assert text_max_chars_from_env({TEXT_MAX_CHARS_ENV: "0"}) == 0
    assert text_max_chars_from_env({TEXT_MAX_CHARS_ENV: "40_000"}) == 40_000
    for bad in ("50", "lots", "-1", "1.5"):
        with pytest.raises(TeacherConfigError, match=TEXT_MAX_CHARS_ENV):
            text_max_chars_from_env({TEXT_MAX_CHARS_ENV: bad})


def test_online_batch_and_raw_calls_send_the_cut_text_and_note_it(monkeypatch):
    with FaultServer(default=ok('{"label": "spam", "confidence": 0.9}')) as srv:
        t = OpenAICompatTeacher(srv.url, "fault-model", api_key_env=None, capability_cache=False)
        assert t.text_max_chars == 16_000
        short, long_ = (run_sync(t.session(TASK).alabel(_item(i, text))) for i, text in ((1, "hi, lunch?"), (2, LONG)))
        raw = run_sync(t.session(TASK).alabel_raw(LONG))  # a cascade deferral of a text not in the store
        whole = OpenAICompatTeacher(srv.url, "fault-model", api_key_env=None, capability_cache=False,
                                    text_max_chars=0)
        run_sync(whole.session(TASK).alabel(_item(3, LONG)))
        monkeypatch.setenv(TEXT_MAX_CHARS_ENV, "2000")
        env_t = OpenAICompatTeacher(srv.url, "fault-model", api_key_env=None, capability_cache=False)
    sent = [user_text(r["body"]) for r in srv.requests]
    assert sent[0] == "hi, lunch?" and short.ok and "input_truncated" not in short.extra
    assert sent[1] == sent[2] == teacher_text(LONG, 16_000)[0] and len(sent[1]) <= 16_000 + 13
    for ans in (long_, raw):
        assert ans.ok and ans.label == "spam" and ans.extra["input_truncated"] is True
        assert "cut from 60,037 to" in ans.error_detail
    assert raw.content_hash != long_.content_hash  # keyed by the text, not by what was sent
    assert sent[3] == LONG  # text_max_chars=0
    assert env_t.text_max_chars == 2000
    line = request_line(env_t, TASK, _item(4, LONG), 0, None, "item-4-pass-0")  # a Batch API line: cut alike
    assert user_text(line["body"]) == teacher_text(LONG, 2000)[0]
    assert env_t.estimate_call(TASK, text_len=60_037) == env_t.estimate_call(TASK, text_len=2000)


QUIET = SimConfig(latency_ms=0, malformed_rate=0, rate_429=0, accuracy=1.0)


def mails_and_long_offers(ws, task: Task, short: int, long: int) -> list[int]:
    """``short`` meeting notes (ham) and ``long`` 60,000-character offers (spam) stored as dataset 'docs'; their ids."""
    recs = [Record(f"short{i}", text=f"meeting notes number {i} for the team", gold_label="ham", source_split="train")
            for i in range(short)]
    recs += [Record(f"long{i}", text=f"offer {i}: " + LONG, gold_label="spam", source_split="train")
             for i in range(long)]
    register(ws, task, recs, progress=False)
    with ws.store() as s:
        return [it.id for it in s.items("docs")]


def test_the_simulated_teacher_knows_a_cut_document_and_the_plan_prices_what_is_sent(ws):
    """Three 60,000-character mails among short ones: labelled right (the simulator recognises the cut text as its
    item), every answer of theirs noted, and the plan's guess of tokens is for 16,000 characters, not 60,000."""
    task = Task(name="docs", modality="text", labels=("spam", "ham"), instructions="Spam or ham?",
                input_per_mtok=1.0, output_per_mtok=1.0)
    ids = mails_and_long_offers(ws, task, 30, 3)
    with ws.store() as s:
        long_hashes = {it.content_hash for it in s.items("docs") if len(it.text or "") > 16_000}
    with run_simulated_teacher(ws, "docs", QUIET) as url:
        t = teacher_from_spec(f"{url}|{model_id('docs', QUIET)}", task, backoff_base=0.01)
        p = plan(ws, "docs", ids, t, LabelConfig(passes=2, adaptive_passes=False))
        rep = label_items(ws, "docs", ids, t, LabelConfig(passes=2, adaptive_passes=False), progress=False)
    assert rep.labelled == 33 and rep.failed == 0
    mean_sent = (30 * len("meeting notes number 10 for the team") + 3 * 16_000) / 33
    assert p["est_tokens_in"] / (2 * 33) < (mean_sent + 2_000) / 4  # not the 60,000 characters stored
    assert p["texts_cut"] == 3 and p["text_max_chars"] == 16_000 and LabelPlan.from_plan(p).texts_cut == 3
    with ws.store() as s:
        rows = s.query("SELECT content_hash, label, error_detail FROM teacher_answers WHERE ok=1")
    long_rows = [r for r in rows if r["content_hash"] in long_hashes]
    assert len(long_rows) == 6 and all(r["label"] == "spam" and "input_truncated" in (r["error_detail"] or "")
                                       for r in long_rows)
    assert all(r["label"] == "ham" and not r["error_detail"] for r in rows if r["content_hash"] not in long_hashes)


def test_a_small_budget_holds_for_long_texts_from_the_first_call(ws):
    """Before any call is recorded the budget reserves the estimated price of a call; that estimate counted only the
    instructions, so 16 calls of 16,000 characters each were let through at once against a budget for 4."""
    task = Task(name="docs", modality="text", labels=("spam", "ham"), instructions="Spam or ham?",
                input_per_mtok=0.30, output_per_mtok=2.50)
    register(ws, task, [Record(f"long{i}", text=f"offer {i}: " + LONG, gold_label="spam", source_split="train")
                        for i in range(24)], progress=False)
    with ws.store() as s:
        ids = [it.id for it in s.items("docs")]
    quiet = SimConfig(latency_ms=50, malformed_rate=0, rate_429=0)
    with run_simulated_teacher(ws, "docs", quiet) as url:
        t = teacher_from_spec(f"{url}|{model_id('docs', quiet)}", task, backoff_base=0.01)
        one = t.estimate_call(task, text_len=16_000).usd
        budget = 4 * one
        rep = label_items(ws, "docs", ids, t, LabelConfig(passes=1, concurrency=16, budget_usd=budget), progress=False)
    assert rep.stopped_by_budget and 0 < rep.calls_made <= 4
    assert rep.cost_usd <= budget


ZH = "我们明天下午三点开会讨论这个项目的设计方案。请大家在星期五之前把意见发给我，发布分支的构建在测试上失败了。"  # 53 characters


def test_a_chinese_character_counts_as_a_token_in_the_limit_and_the_plan(ws):
    """A CJK character is about a token on its own (English: ~4 characters a token), so 16,000 characters of
    Chinese were ~16,000 tokens sent and priced as 4,000.  Now the limit and the token guess count one as 4."""
    zh_long = ZH * 200  # 10,600 characters: as many tokens as 42,400 characters of English
    cut, note = teacher_text(zh_long, 16_000)
    assert 3_900 <= len(cut.removesuffix(" …[truncated]")) <= 4_000 and zh_long.startswith(cut[:3_900])
    assert "cut from 10,600 to" in note and "CJK character counted as 4" in note
    assert teacher_text(ZH * 70, 16_000) == (ZH * 70, None)  # 3,710 characters: within the limit, whole
    mixed = "Meeting notes: " + ZH * 5
    assert teacher_text(mixed, 16_000) == (mixed, None)

    task = Task(name="zh", modality="text", labels=("会议", "其他"), instructions="这是会议通知吗？")
    register(ws, task, [Record(f"m{i}", text=f"{i}: " + ZH * 40, gold_label="会议", source_split="train")
                        for i in range(10)], progress=False)
    with ws.store() as s:
        ids = [it.id for it in s.items("zh")]
    t = OpenAICompatTeacher("http://127.0.0.1:9/v1", "m", api_key_env=None, capability_cache=False)
    p = plan(ws, "zh", ids, t, LabelConfig(passes=1, adaptive_passes=False, tie_break=False))
    per_call = p["est_tokens_in"] / p["calls_needed"]
    assert per_call >= len(ZH * 40)  # 2,120 characters, about as many tokens (counted as a quarter before)
    assert p["texts_cut"] == 0


def test_the_token_guess_is_near_a_real_tokenizers_count_in_chinese_and_english():
    """Measured against MiniLM's WordPiece tokenizer (shipped offline; it splits CJK text a character a token):
    the guess ``latin_len / 4`` is within 35 % for both, where plain characters / 4 was four times low for Chinese."""
    from llm_flywheel.core.scripts import latin_len
    from llm_flywheel.students.minilm import _piece_counter

    tok, _ = _piece_counter()
    for text in (ZH * 20, LONG[:4000]):
        pieces = len(tok.encode(text, add_special_tokens=False).ids)
        assert 0.65 <= (latin_len(text) / 4) / pieces <= 1.35, (text[:20], latin_len(text) / 4, pieces)
    zh_pieces = len(tok.encode(ZH * 20, add_special_tokens=False).ids)
    assert len(ZH * 20) / 4 < 0.3 * zh_pieces  # the old guess


def test_a_batch_api_answer_for_a_cut_text_is_noted_as_online(ws):
    """The Batch API line sends the cut text (``request_line``); its answer, read back from the output file, is
    noted ``input_truncated`` as an online answer is (it was stored without a note)."""
    from llm_flywheel.pipeline.batch_labeling import BatchConfig, label_items_batch

    task = Task(name="docs", modality="text", labels=("spam", "ham"), instructions="Spam or ham?")
    ids = mails_and_long_offers(ws, task, 4, 2)
    with run_simulated_teacher(ws, "docs", QUIET) as url:
        t = teacher_from_spec(f"{url}|{model_id('docs', QUIET)}", task, backoff_base=0.01)
        rep = label_items_batch(ws, "docs", ids, t, LabelConfig(passes=1), BatchConfig(poll_s=0.05), progress=False)
    assert rep.labelled == 6
    with ws.store() as s:
        rows = s.query("SELECT a.label, a.error_detail, i.text FROM teacher_answers a JOIN items i "
                       "ON i.content_hash = a.content_hash WHERE a.ok = 1")
    assert len(rows) == 6
    for r in rows:
        cut = len(r["text"]) > 16_000
        assert r["label"] == ("spam" if cut else "ham")
        assert ("input_truncated" in (r["error_detail"] or "")) == cut, r["error_detail"]
