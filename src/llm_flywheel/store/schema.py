"""The schema: splits, model roles and the forward-only migrations (``PRAGMA user_version``)."""

from __future__ import annotations

import sqlite3

from llm_flywheel.store.records import StoreError

SPLITS = ("train", "val", "calib", "test", "stream")
"""Assigned splits.  ``train``: the pool the teacher labels from; ``val``: model selection and promotion;
``calib``: temperature scaling and the cascade threshold; ``test``: final numbers only, never a choice;
``stream``: unseen traffic served through the cascade, one slice per round."""

MIGRATIONS: list[str] = [
    # v1 -- the whole initial schema
    """
    CREATE TABLE datasets(
        name        TEXT PRIMARY KEY,
        task_json   TEXT NOT NULL,          -- the Task (labels, descriptions, instructions, modality)
        created_at  REAL NOT NULL
    );
    CREATE TABLE items(
        id            INTEGER PRIMARY KEY,
        dataset       TEXT NOT NULL REFERENCES datasets(name),
        source_ref    TEXT NOT NULL,        -- stable reference in the source ("train:123", a file path, a row number)
        content_hash  TEXT NOT NULL,        -- sha256 of the content bytes; keys the blob and the teacher cache
        modality      TEXT NOT NULL,        -- image | text | tabular
        blob_path     TEXT,                 -- images: path relative to the workspace (content addressed)
        text          TEXT,                 -- text items
        features_json TEXT,                 -- tabular items: JSON list of floats
        source_split  TEXT,                 -- split given by the source (train/test) if any
        split         TEXT,                 -- assigned split, see SPLITS (NULL until splits are made)
        gold_label    TEXT,                 -- ground truth when the source has it (used for measurement only)
        created_at    REAL NOT NULL,
        UNIQUE(dataset, source_ref)
    );
    CREATE INDEX items_hash ON items(content_hash);
    CREATE INDEX items_split ON items(dataset, split);

    CREATE TABLE teacher_answers(
        id              INTEGER PRIMARY KEY,
        item_id         INTEGER NOT NULL REFERENCES items(id),
        content_hash    TEXT NOT NULL,
        model           TEXT NOT NULL,
        prompt_version  TEXT NOT NULL,
        pass_index      INTEGER NOT NULL,
        ok              INTEGER NOT NULL,   -- 1: a final answer (cached, never re-asked); 0: a failure, retried next run
        label           TEXT,               -- one of the task's labels, or NULL (see error_kind)
        confidence      REAL,               -- verbalised confidence 0..1
        label_logprob   REAL,               -- log-probability of the label tokens when the provider returns them
        logprobs_json   TEXT,               -- raw token log-probabilities (trimmed) when returned
        reason          TEXT,
        raw_text        TEXT,
        tokens_in       INTEGER,
        tokens_out      INTEGER,
        cost_usd        REAL,
        latency_s       REAL,
        error_kind      TEXT,               -- NULL | off_list | parse | http_4xx | http_429 | http_5xx | timeout | connection | refused
        error_detail    TEXT,
        run_id          INTEGER,
        created_at      REAL NOT NULL
    );
    CREATE UNIQUE INDEX teacher_answers_final
        ON teacher_answers(content_hash, model, prompt_version, pass_index) WHERE ok = 1;
    CREATE INDEX teacher_answers_item ON teacher_answers(item_id);

    CREATE TABLE labels(
        item_id     INTEGER NOT NULL REFERENCES items(id),
        source      TEXT NOT NULL,          -- teacher | human
        label       TEXT,                   -- NULL when the teacher passes disagree and await review / tie-break
        quality     REAL,                   -- 0..1 how much to trust it (agreement x confidence)
        soft_json   TEXT,                   -- JSON {label: prob} soft target from the passes
        status      TEXT NOT NULL,          -- agreed | tie_broken | disagreed | single | human
        provenance  TEXT,                   -- JSON: model, prompt version, answer ids, reviewer
        updated_at  REAL NOT NULL,
        PRIMARY KEY(item_id, source)
    );

    CREATE TABLE reviews(
        id          INTEGER PRIMARY KEY,
        item_id     INTEGER NOT NULL REFERENCES items(id),
        label       TEXT NOT NULL,
        reviewer    TEXT,
        note        TEXT,
        created_at  REAL NOT NULL
    );
    CREATE TABLE review_queue(
        item_id     INTEGER PRIMARY KEY REFERENCES items(id),
        reason      TEXT NOT NULL,          -- disagreement | label_issue | low_confidence | audit
        score       REAL,
        created_at  REAL NOT NULL,
        resolved_at REAL
    );

    CREATE TABLE runs(
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,          -- label | train | run | demo | serve ...
        config_json TEXT,
        status      TEXT NOT NULL,          -- running | done | failed | stopped
        started_at  REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE models(
        id           INTEGER PRIMARY KEY,
        version      TEXT NOT NULL UNIQUE,
        dataset      TEXT NOT NULL,
        kind         TEXT NOT NULL,         -- student kind, e.g. image-cnn, efficientnet-lite0, text-minilm
        path         TEXT NOT NULL,         -- relative to the workspace
        metrics_json TEXT,
        meta_json    TEXT,
        round        INTEGER,
        promoted     INTEGER NOT NULL DEFAULT 0,
        created_at   REAL NOT NULL
    );
    CREATE TABLE rounds(
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER REFERENCES runs(id),
        dataset       TEXT NOT NULL,
        round         INTEGER NOT NULL,
        model_version TEXT,
        metrics_json  TEXT,
        started_at    REAL NOT NULL,
        finished_at   REAL
    );
    CREATE TABLE cascade_log(
        id                 INTEGER PRIMARY KEY,
        ts                 REAL NOT NULL,
        dataset            TEXT,
        item_id            INTEGER,          -- NULL for requests from outside the store
        content_hash       TEXT,
        source             TEXT NOT NULL,    -- student | teacher | teacher_failed
        label              TEXT,
        confidence         REAL,
        student_label      TEXT,
        student_confidence REAL,
        teacher_label      TEXT,
        model_version      TEXT,
        threshold          REAL,
        latency_ms         REAL,
        round              INTEGER,
        origin             TEXT,             -- run | serve | predict
        payload_ref        TEXT              -- where the input was kept (sampled, size bounded), if at all
    );
    CREATE INDEX cascade_log_ts ON cascade_log(ts);
    CREATE TABLE reports(
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,          -- teacher_quality | evaluation | calibration | cost | ...
        key         TEXT NOT NULL,          -- what it is about (model id, model version, ...)
        json        TEXT NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE INDEX reports_kind ON reports(kind, key);
    """,
    # v2 -- model roles: a reference model (trained on gold labels, e.g. the gold-label ceiling) is for measurement
    # only; it is never promoted, served or calibrated unless asked for by name.  Backfills the ceilings that
    # `flywheel evaluate --ceiling` (<version>-gold-ceiling) and the wheel's end-of-run report recorded.
    """
    ALTER TABLE models ADD COLUMN role TEXT NOT NULL DEFAULT 'student';
    UPDATE models SET role='reference', promoted=0 WHERE version LIKE '%-gold-ceiling'
        OR version IN (SELECT json_extract(json, '$.gold_ceiling_version') FROM reports
                       WHERE kind='wheel' AND json_valid(json));
    CREATE TRIGGER models_reference_never_promoted BEFORE UPDATE OF promoted ON models
        WHEN NEW.promoted=1 AND NEW.role='reference'
    BEGIN
        SELECT RAISE(ABORT, 'a reference model (trained on gold labels) cannot be promoted');
    END;
    CREATE TRIGGER models_reference_never_promoted_insert BEFORE INSERT ON models
        WHEN NEW.promoted=1 AND NEW.role='reference'
    BEGIN
        SELECT RAISE(ABORT, 'a reference model (trained on gold labels) cannot be promoted');
    END;
    """,
    # v3 -- what each OpenAI-compatible teacher endpoint accepted (response_format mode, logprobs), keyed by
    # (base_url, model), so a later run starts from what worked instead of re-learning it from refusals
    """
    CREATE TABLE teacher_capabilities(
        base_url    TEXT NOT NULL,
        model       TEXT NOT NULL,
        caps_json   TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (base_url, model)
    );
    """,
    # v4 -- serving (issue 11): a teacher answer bought for a served input that is not a store item is stored
    # before it is used, keyed like the teacher_answers cache, so no process pays twice for the same content;
    # cascade_log.collected_at marks the rows the wheel has read as feedback, so retention never deletes the others
    """
    CREATE TABLE served_teacher_answers(
        content_hash    TEXT NOT NULL,
        model           TEXT NOT NULL,
        prompt_version  TEXT NOT NULL,
        label           TEXT,               -- as answered (may be off-list: final all the same)
        confidence      REAL,
        tokens_in       INTEGER,
        tokens_out      INTEGER,
        cost_usd        REAL,
        latency_s       REAL,
        created_at      REAL NOT NULL,
        PRIMARY KEY (content_hash, model, prompt_version)
    );
    ALTER TABLE cascade_log ADD COLUMN collected_at REAL;
    """,
    # v5 -- Batch API labelling (issue 12.4): every submission is recorded BEFORE it is sent (its own id travels to
    # the provider as batch metadata) and the (item, pass) each line covers, so a run killed after submitting
    # finds its batch again instead of paying for the same lines twice
    """
    CREATE TABLE teacher_batches(
        id              INTEGER PRIMARY KEY,
        submission      TEXT NOT NULL UNIQUE,  -- our id, sent as metadata: finds a batch created just before a kill
        dataset         TEXT NOT NULL,
        base_url        TEXT NOT NULL,
        model           TEXT NOT NULL,
        prompt_version  TEXT NOT NULL,
        input_file_id   TEXT,                  -- the uploaded JSONL (NULL until uploaded)
        batch_id        TEXT,                  -- the provider's batch id (NULL until created)
        status          TEXT NOT NULL,         -- prepared | uploaded | the provider's status | collected
        output_file_id  TEXT,
        error_file_id   TEXT,
        n_lines         INTEGER NOT NULL,
        reserved_usd    REAL,                  -- what the budget set aside for it at submit time
        cost_usd        REAL,                  -- what its collected answers cost (batch price)
        price_ratio     REAL NOT NULL,         -- batch price / online price used where the provider reports no cost
        detail          TEXT,                  -- the provider's errors for a failed / expired batch
        run_id          INTEGER,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        collected_at    REAL                   -- NULL while its answers are still to be fetched
    );
    CREATE INDEX teacher_batches_open ON teacher_batches(model, prompt_version, collected_at);
    CREATE TABLE teacher_batch_lines(
        batch           INTEGER NOT NULL REFERENCES teacher_batches(id),
        custom_id       TEXT NOT NULL,
        item_id         INTEGER NOT NULL REFERENCES items(id),
        content_hash    TEXT NOT NULL,
        pass_index      INTEGER NOT NULL,
        answer_id       INTEGER,               -- the teacher_answers row it produced, once collected
        PRIMARY KEY (batch, custom_id)
    );
    CREATE INDEX teacher_batch_lines_key ON teacher_batch_lines(content_hash, pass_index);
    """,
]

MODEL_ROLES = ("student", "reference")
"""``student``: trained on teacher/human labels, what the wheel serves.  ``reference``: trained on gold labels
(the gold-label ceiling) -- a measurement, used only when asked for by name."""

SCHEMA_VERSION = len(MIGRATIONS)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    out, buf = [], []
    for line in script.splitlines():
        buf.append(line.split("--", 1)[0])
        joined = "\n".join(buf)
        if sqlite3.complete_statement(joined):
            if joined.strip():
                out.append(joined.strip())
            buf = []
    if "\n".join(buf).strip():
        raise StoreError("incomplete SQL in migration")
    return out
