"""What a teacher is asked: the prompt wordings, the diverse passes, the JSON schema and the request body.

Why a module of its own: the prompt is the answer cache's key (:func:`compute_prompt_version` hashes every
template), so everything that changes what the model reads lives here, next to that hash, and nowhere else.

* **Diverse passes.**  Pass 0 is temperature 0 with the labels in their canonical order; later passes use a
  different wording, a (fixed, per-pass) shuffled label order and temperature > 0.  Identical T=0 calls are
  almost perfectly correlated and check nothing.
* **Static part first.**  The instructions and the label list are the system message and the item text is the
  user message, so every request of a pass starts with the same tokens: a server with a prompt cache (llama.cpp's
  ``cache_prompt``, vLLM's prefix caching, OpenAI's automatic caching) processes that prefix once.
* **Label first, reason bounded**, so a reply cut off at ``max_tokens`` still carries its label.
* **Each pass's wording stays before the item** although a local server would be faster otherwise.  Putting what
  makes a later pass different *after* the item lets llama.cpp reuse the item's cache across passes (2.18x the
  pre-change client on 160 emails, instead of 1.21x), but on a task SmolLM2-135M can do it cut the consensus from
  83.0 % to 71.5 % (``benchmarks/bench_prompt_layout.py``): measured and rejected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

from llm_flywheel.core.task import Task

TEMPLATE_VERSION = "2"  # 2: reason bounded to 12 words / 100 characters in every wording (changes prompt_version)
REASON_MAX_CHARS = 100
REASON_MAX_WORDS = 12
# the negotiation order: OpenAI structured outputs, llama.cpp's native schema form, plain JSON mode, prompt only
RESPONSE_FORMAT_MODES = ("json_schema", "json_object_schema", "json_object", "none")
STRUCTURED_MODES = frozenset(RESPONSE_FORMAT_MODES[:-1])

_REASON_RULE = f"at most {REASON_MAX_WORDS} words, {REASON_MAX_CHARS} characters"
WORDINGS: tuple[str, ...] = (
    "{instructions}\n\nChoose exactly one label from this list:\n{label_list}\n\n"
    "Answer with JSON only, no other text, label first: "
    '{{"label": "<one label name from the list>", "confidence": <probability 0-1 that you are right>, '
    f'"reason": "<{_REASON_RULE}>"}}}}',
    "You are a careful expert annotator. {instructions}\n\nThe possible classes are:\n{label_list}\n\n"
    "Look at the input closely and consider the most similar classes before deciding. Reply with a single JSON "
    'object with keys, in this order, "label" (a class name exactly as written above), "confidence" (a number '
    f'between 0 and 1) and "reason" ({_REASON_RULE}).',
    "Task: {instructions}\nAllowed answers (use the name before the colon):\n{label_list}\n\n"
    f"Which one fits best? Respond only with JSON (reason: {_REASON_RULE}): "
    '{{"label": "...", "confidence": 0.0, "reason": "..."}}',
)
NO_REASON_NOTE = ('\n\nYour previous answer was cut off. Answer with only {"label": ..., "confidence": ...} '
                  "-- no reason.")
TEMPERATURES: tuple[float, ...] = (0.0, 0.7, 1.0)
# The label-only wordings: the same three, asking for no reason.  For a server on the user's own CPU, decoding is
# most of a call's time (SmolLM2-135M on llama.cpp: ~75 % of slot time for ~40 output tokens) and a reason is ~25
# of those tokens that nothing downstream reads; the label and its confidence are what the wheel needs.
# Measured and rejected: a compact GBNF grammar for llama.cpp (no newlines, two decimals) cut the reply from 25-41
# tokens to 18 but made each token ~7x slower: llama.cpp samples first and applies a grammar to the whole vocabulary
# only when the sampled token is rejected, and a layout the model does not choose itself is rejected at most steps.
LABEL_ONLY_WORDINGS: tuple[str, ...] = (
    "{instructions}\n\nChoose exactly one label from this list:\n{label_list}\n\n"
    "Answer with JSON only, no other text: "
    '{{"label": "<one label name from the list>", "confidence": <probability 0-1 that you are right>}}',
    "You are a careful expert annotator. {instructions}\n\nThe possible classes are:\n{label_list}\n\n"
    "Look at the input closely and consider the most similar classes before deciding. Reply with a single JSON "
    'object with keys, in this order, "label" (a class name exactly as written above) and "confidence" (a number '
    "between 0 and 1).",
    "Task: {instructions}\nAllowed answers (use the name before the colon):\n{label_list}\n\n"
    'Which one fits best? Respond only with JSON: {{"label": "...", "confidence": 0.0}}',
)


def pass_variant(pass_index: int) -> dict[str, Any]:
    """How pass ``pass_index`` differs from the others: wording, label order, temperature."""
    if pass_index < 0:
        raise ValueError(f"pass_index must be >= 0, got {pass_index}")
    return {
        "wording": pass_index % len(WORDINGS),
        "order": "canonical" if pass_index == 0 else f"shuffled-{pass_index}",
        "temperature": TEMPERATURES[min(pass_index, len(TEMPERATURES) - 1)],
    }


def label_order(task: Task, pass_index: int) -> list[str]:
    """The task's labels in pass ``pass_index``'s order (canonical for pass 0, a fixed shuffle after)."""
    labels = list(task.labels)
    if pass_index > 0:
        random.Random(f"label-order-{pass_index}").shuffle(labels)
    return labels


def system_prompt(task: Task, pass_index: int, *, reason: bool = True) -> str:
    """The instructions and label list of one pass: identical for every item, so servers can cache it.
    ``reason=False``: the label-only wording (:data:`LABEL_ONLY_WORDINGS`)."""
    v = pass_variant(pass_index)
    lines = "\n".join(f"- {lab}: {task.descriptions.get(lab, lab.replace('_', ' '))}" for lab in label_order(task, pass_index))
    instr = task.instructions or f"Classify this {task.modality} input."
    if task.features:
        instr += ("\n\nEach record is a JSON list of its feature values, in this order: "
                  + ", ".join(task.features) + " (null: a missing value).")
    wordings = WORDINGS if reason else LABEL_ONLY_WORDINGS
    return wordings[v["wording"]].format(instructions=instr, label_list=lines)


def compute_prompt_version(task: Task | None, *, reason: bool = True) -> str:
    """Hash of every template + pass variant + the task's wording; the answer cache is keyed on it.  The
    label-only prompts hash differently; the prompts with a reason hash exactly as before they existed."""
    payload: dict[str, Any] = {
        "template": TEMPLATE_VERSION,
        "wordings": WORDINGS,
        "temperatures": TEMPERATURES,
        "task": None
        if task is None
        else {"labels": task.labels, "descriptions": task.descriptions, "instructions": task.instructions, "modality": task.modality},
    }
    if task is not None and task.features:  # only tables with named columns: every other prompt hashes as before
        payload["task"]["features"] = list(task.features)
    if not reason:
        payload["label_only"] = LABEL_ONLY_WORDINGS
    return "p" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def response_schema(task: Task, *, reason: bool = True, max_length: bool = True,
                    confidence: bool = True) -> dict[str, Any]:
    """The ``json_schema`` response format: ``label`` first (a reply cut off later still carries it), ``reason``
    bounded so replies end well before ``max_tokens``; ``reason=False`` for the re-ask after a truncation,
    ``max_length=False`` for a server that refuses the ``maxLength`` keyword.

    ``confidence=False``: the reply ends after the label.  The prompt is the same (so is the cache key): the label is
    decoded first, under the same instructions and the same grammar up to its closing quote, so it is the answer it
    would have been; only the number after it is not written.  For llama.cpp's server, whose label probability is
    read from its logprobs (a better signal than the stated number), that number was 10 of 29 decoded tokens (SmolLM2
    on SpamAssassin: 1.11x the emails a second)."""
    props: dict[str, Any] = {"label": {"type": "string", "enum": list(task.labels)}}
    if confidence:
        props["confidence"] = {"type": "number"}
    if reason:
        props["reason"] = {"type": "string", **({"maxLength": REASON_MAX_CHARS} if max_length else {})}
    return {
        "name": "label_answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        },
    }


def response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` field for one negotiation mode (``None``: prompt only)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": schema}
    if mode == "json_object_schema":  # llama.cpp (C++ and llama-cpp-python): JSON mode constrained by a schema
        return {"type": "json_object", "schema": schema["schema"]}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def row_content(features: Sequence[float | None]) -> str:
    """A row of numbers as the teacher reads it (``None``: a missing value).  One definition, because the client,
    the cascade's guard, the API's in-memory inputs and the simulated teacher (which recognises an item by a hash
    of exactly what is sent) must all write the same text for the same row."""
    return "Features: " + json.dumps(list(features))


def image_content(data: bytes, mime: str = "image/png") -> list[dict[str, Any]]:
    """An image as OpenAI-style content parts (the exact bytes, base64 in a data URL)."""
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return [
        {"type": "text", "text": "Classify this image."},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def body_size(content: Any) -> int:
    """How big a request's input is, for the timeout: characters of text, bytes of base64 images."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(json.dumps(p)) for p in content)
    return 0
