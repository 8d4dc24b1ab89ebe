"""The SQLite store at the centre of the wheel.

Why SQLite in WAL mode: one file that survives ``kill -9`` (every write is a transaction), lets the
service read while a labelling run writes, and needs no server.  Every expensive result (a teacher
answer) is written here *before* it is used, so any run can be killed and resumed without paying twice.

The schema is versioned with ``PRAGMA user_version`` and migrated forward by :data:`MIGRATIONS`; to change
it, append a migration, never edit an old one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
]

MODEL_ROLES = ("student", "reference")
"""``student``: trained on teacher/human labels, what the wheel serves.  ``reference``: trained on gold labels
(the gold-label ceiling) -- a measurement, used only when asked for by name."""

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """A store that cannot be used (newer schema, not a flywheel database, ...)."""


@dataclass(frozen=True)
class Item:
    id: int
    dataset: str
    source_ref: str
    content_hash: str
    modality: str
    blob_path: str | None
    text: str | None
    features: list[float] | None
    source_split: str | None
    split: str | None
    gold_label: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Item":
        return cls(
            id=row["id"],
            dataset=row["dataset"],
            source_ref=row["source_ref"],
            content_hash=row["content_hash"],
            modality=row["modality"],
            blob_path=row["blob_path"],
            text=row["text"],
            features=json.loads(row["features_json"]) if row["features_json"] else None,
            source_split=row["source_split"],
            split=row["split"],
            gold_label=row["gold_label"],
        )


def connect(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open a connection with the settings every part of the project relies on."""
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills, fast
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


class Store:
    """Typed access to ``flywheel.db``.  One instance per thread/process; SQLite does the locking."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            self.conn = connect(self.path)
        except sqlite3.DatabaseError as e:  # "file is not a database", a corrupt header, ...
            raise StoreError(f"{self.path} is not a usable SQLite database ({e}); move it aside or use another workspace") from None
        if not readonly:
            self.migrate()
        else:
            self._check_version()

    # -- lifecycle -----------------------------------------------------------------------------
    def _check_version(self) -> int:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema v{version}, newer than this llm-flywheel (v{SCHEMA_VERSION}); upgrade the package"
            )
        return version

    def migrate(self) -> None:
        version = self._check_version()
        for target in range(version, SCHEMA_VERSION):
            with self.transaction() as c:
                for stmt in _split_sql(MIGRATIONS[target]):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={target + 1}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: all or nothing, and the write lock is taken up front."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    # -- datasets --------------------------------------------------------------------------------
    def put_dataset(self, name: str, task_json: str) -> None:
        self.execute(
            "INSERT INTO datasets(name, task_json, created_at) VALUES(?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET task_json=excluded.task_json",
            (name, task_json, time.time()),
        )

    def dataset_names(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM datasets ORDER BY name")]

    def dataset_task_json(self, name: str) -> str:
        row = self.conn.execute("SELECT task_json FROM datasets WHERE name=?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.dataset_names()) or "none"
            raise StoreError(f"dataset {name!r} is not in this workspace (known: {known}); run `flywheel data add` first")
        return row["task_json"]

    # -- items -----------------------------------------------------------------------------------
    def add_items(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert items in one transaction; already-present (dataset, source_ref) are skipped.

        Returns the number of new items.  Callers batch (a few thousand rows) so a kill loses at most a batch,
        and a re-run skips what is already there.
        """
        now = time.time()
        with self.transaction() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO items(dataset, source_ref, content_hash, modality, blob_path, text, "
                "features_json, source_split, split, gold_label, created_at) VALUES "
                "(:dataset, :source_ref, :content_hash, :modality, :blob_path, :text, :features_json, "
                ":source_split, :split, :gold_label, :created_at)",
                [
                    {
                        "blob_path": None,
                        "text": None,
                        "features_json": None,
                        "source_split": None,
                        "split": None,
                        "gold_label": None,
                        **r,
                        "created_at": now,
                    }
                    for r in rows
                ],
            )
            return c.total_changes - before

    def items(
        self,
        dataset: str,
        *,
        split: str | Sequence[str] | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[Item]:
        sql = "SELECT * FROM items WHERE dataset=?"
        params: list[Any] = [dataset]
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            sql += f" AND split IN ({','.join('?' * len(splits))})"
            params += splits
        if ids is not None:
            ids = list(ids)
            if not ids:
                return []
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            params += ids
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Item.from_row(r) for r in self.query(sql, params)]

    def item(self, item_id: int) -> Item:
        row = self.conn.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise StoreError(f"no item {item_id}")
        return Item.from_row(row)

    def set_splits(self, assignments: Iterable[tuple[int, str]]) -> None:
        with self.transaction() as c:
            c.executemany("UPDATE items SET split=? WHERE id=?", [(s, i) for i, s in assignments])

    def split_rows(self, dataset: str) -> list[sqlite3.Row]:
        """id, source_split, split, content_hash, text of every item (by id): what splitting and its checks need."""
        return self.query("SELECT id, source_split, split, content_hash, text FROM items WHERE dataset=? ORDER BY id",
                          (dataset,))

    def split_counts(self, dataset: str) -> dict[str | None, int]:
        """split (None: unassigned) -> number of items."""
        return {r["split"]: int(r["n"]) for r in self.query(
            "SELECT split, COUNT(*) AS n FROM items WHERE dataset=? GROUP BY split", (dataset,))}

    def labelled_counts_by_split(self, dataset: str) -> dict[str | None, int]:
        """split -> items already used: a label row (teacher or human, decided or not), a review, or a cascade answer."""
        return {r["split"]: int(r["n"]) for r in self.query(
            "SELECT i.split AS split, COUNT(*) AS n FROM items i WHERE i.dataset=? AND ("
            " EXISTS(SELECT 1 FROM labels l WHERE l.item_id=i.id) OR EXISTS(SELECT 1 FROM reviews r WHERE r.item_id=i.id)"
            " OR i.id IN (SELECT item_id FROM cascade_log WHERE item_id IS NOT NULL)) GROUP BY i.split", (dataset,))}

    # -- labels ----------------------------------------------------------------------------------
    def effective_labels(self, dataset: str, *, split: str | Sequence[str] | None = None) -> dict[int, str]:
        """item id -> best available label: a human label outranks the teacher's consensus."""
        sql = (
            "SELECT i.id AS id, COALESCE(h.label, t.label) AS label FROM items i "
            "LEFT JOIN labels h ON h.item_id=i.id AND h.source='human' "
            "LEFT JOIN labels t ON t.item_id=i.id AND t.source='teacher' "
            "WHERE i.dataset=? AND COALESCE(h.label, t.label) IS NOT NULL"
        )
        params: list[Any] = [dataset]
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            sql += f" AND i.split IN ({','.join('?' * len(splits))})"
            params += splits
        return {r["id"]: r["label"] for r in self.query(sql, params)}

    # -- human review ------------------------------------------------------------------------------
    def review_candidates(self, dataset: str, *, low_confidence_below: float | None = None) -> list[dict[str, Any]]:
        """What a person should look at: unresolved review-queue entries (teacher disagreements, label issues, audit
        disagreements) and, with ``low_confidence_below``, stream items the cascade deferred whose teacher label
        quality is below it (reason ``low_confidence``).  Items that already have a human label are left out."""
        cols = ("i.id AS id, i.source_ref AS source_ref, i.content_hash AS content_hash, i.modality AS modality, "
                "i.blob_path AS blob_path, i.text AS text, i.features_json AS features_json, i.split AS split, "
                "t.label AS teacher_label, t.quality AS quality, t.soft_json AS soft_json, t.status AS status, "
                "t.provenance AS provenance")
        no_human = "NOT EXISTS(SELECT 1 FROM labels h WHERE h.item_id=i.id AND h.source='human')"
        rows = [dict(r) for r in self.query(
            f"SELECT {cols}, q.reason AS reason, q.score AS queue_score FROM review_queue q JOIN items i ON i.id=q.item_id "
            f"LEFT JOIN labels t ON t.item_id=i.id AND t.source='teacher' "
            f"WHERE i.dataset=? AND q.resolved_at IS NULL AND {no_human} ORDER BY i.id", (dataset,))]
        if low_confidence_below is not None:
            rows += [dict(r) for r in self.query(
                f"SELECT {cols}, 'low_confidence' AS reason, NULL AS queue_score FROM labels t JOIN items i ON i.id=t.item_id "
                f"WHERE i.dataset=? AND t.source='teacher' AND t.label IS NOT NULL AND t.quality < ? AND {no_human} "
                f"AND NOT EXISTS(SELECT 1 FROM review_queue q WHERE q.item_id=i.id) "
                f"AND EXISTS(SELECT 1 FROM cascade_log c WHERE c.item_id=i.id AND c.source='teacher') ORDER BY i.id",
                (dataset, float(low_confidence_below)))]
        return rows

    def apply_human_label(self, item_id: int, label: str, *, at: float, reviewer: str | None, note: str,
                          provenance: dict[str, Any]) -> str:
        """Record one human decision made at time ``at`` (epoch seconds) and make the newest decision the item's
        human label; resolves its review-queue entry.  Returns ``seen`` (this decision -- same item, note and time --
        is already recorded: nothing changes), ``older`` (recorded in history; a newer decision stays the label) or
        ``applied``.  Why ``at`` and not now: pulling the same annotations twice, or in another order, must end in
        the same state."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM reviews WHERE item_id=? AND note=? AND created_at=?",
                         (item_id, note, at)).fetchone():
                return "seen"
            c.execute("INSERT INTO reviews(item_id, label, reviewer, note, created_at) VALUES(?,?,?,?,?)",
                      (item_id, label, reviewer, note, at))
            cur = c.execute("SELECT updated_at FROM labels WHERE item_id=? AND source='human'", (item_id,)).fetchone()
            if cur is not None and cur["updated_at"] > at:
                return "older"
            c.execute(
                "INSERT INTO labels(item_id, source, label, quality, soft_json, status, provenance, updated_at) "
                "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(item_id, source) DO UPDATE SET label=excluded.label, "
                "quality=excluded.quality, soft_json=excluded.soft_json, status=excluded.status, "
                "provenance=excluded.provenance, updated_at=excluded.updated_at",
                (item_id, "human", label, 1.0, json.dumps({label: 1.0}), "human", json.dumps(provenance), at))
            c.execute("UPDATE review_queue SET resolved_at=? WHERE item_id=? AND resolved_at IS NULL", (time.time(), item_id))
            return "applied"

    def human_labels(self, dataset: str) -> dict[int, str]:
        """item id -> human label, for every item of ``dataset`` a person labelled."""
        return {int(r["item_id"]): r["label"] for r in self.query(
            "SELECT l.item_id AS item_id, l.label AS label FROM labels l JOIN items i ON i.id=l.item_id "
            "WHERE i.dataset=? AND l.source='human' AND l.label IS NOT NULL", (dataset,))}

    def teacher_labels(self, item_ids: Sequence[int]) -> dict[int, str | None]:
        """item id -> the teacher's consensus label (None where the passes disagreed), for the given items."""
        out: dict[int, str | None] = {}
        ids = list(item_ids)
        for s in range(0, len(ids), 900):
            chunk = ids[s : s + 900]
            out |= {int(r["item_id"]): r["label"] for r in self.query(
                f"SELECT item_id, label FROM labels WHERE source='teacher' AND item_id IN ({','.join('?' * len(chunk))})",
                chunk)}
        return out

    def review_history(self, item_id: int) -> list[dict[str, Any]]:
        """Every recorded human decision on an item, oldest first."""
        return [dict(r) for r in self.query(
            "SELECT id, label, reviewer, note, created_at FROM reviews WHERE item_id=? ORDER BY created_at, id", (item_id,))]

    # -- runs, rounds, models, reports --------------------------------------------------------------
    def start_run(self, kind: str, config: dict[str, Any]) -> int:
        cur = self.execute(
            "INSERT INTO runs(kind, config_json, status, started_at) VALUES(?,?,?,?)",
            (kind, json.dumps(config, default=str), "running", time.time()),
        )
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str = "done") -> None:
        self.execute("UPDATE runs SET status=?, finished_at=? WHERE id=?", (status, time.time(), run_id))

    def add_model(self, *, version: str, dataset: str, kind: str, path: str, metrics: dict[str, Any],
                  meta: dict[str, Any], round: int | None, role: str = "student") -> None:
        """Record a trained model; ``role='reference'`` (gold-trained) keeps it out of every default lookup."""
        if role not in MODEL_ROLES:
            raise ValueError(f"model role must be one of {MODEL_ROLES}, not {role!r}")
        self.execute(
            "INSERT INTO models(version, dataset, kind, path, metrics_json, meta_json, round, role, created_at) "
            "VALUES(?,?,?,?,?,?,?,?,?)",
            (version, dataset, kind, path, json.dumps(metrics, default=float), json.dumps(meta, default=str), round,
             role, time.time()),
        )

    def model(self, version: str) -> dict[str, Any] | None:
        """The ``models`` row of ``version`` as a dict, or None."""
        row = self.conn.execute("SELECT * FROM models WHERE version=?", (version,)).fetchone()
        return dict(row) if row else None

    def model_versions(self, dataset: str | None = None, *, role: str | None = None, limit: int | None = None
                       ) -> list[str]:
        """Model versions, newest first, optionally of one dataset and/or one role."""
        sql, params = "SELECT version FROM models WHERE 1=1", []
        if dataset is not None:
            sql, params = sql + " AND dataset=?", params + [dataset]
        if role is not None:
            sql, params = sql + " AND role=?", params + [role]
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        return [r["version"] for r in self.query(sql, params)]

    def serving_version(self, dataset: str, *, promoted_only: bool = False) -> str | None:
        """THE serving model of ``dataset``: the newest promoted student, else (unless ``promoted_only``) the newest
        student.  Reference models (gold-trained) are never returned: they are used only when named."""
        where = "dataset=? AND role='student'" + (" AND promoted=1" if promoted_only else "")
        row = self.conn.execute(f"SELECT version FROM models WHERE {where} ORDER BY promoted DESC, id DESC LIMIT 1",
                                (dataset,)).fetchone()
        return str(row["version"]) if row else None

    def add_report(self, kind: str, key: str, payload: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO reports(kind, key, json, created_at) VALUES(?,?,?,?)",
            (kind, key, json.dumps(payload, default=float), time.time()),
        )

    def latest_report(self, kind: str, key: str | None = None) -> dict[str, Any] | None:
        if key is None:
            row = self.conn.execute(
                "SELECT json FROM reports WHERE kind=? ORDER BY id DESC LIMIT 1", (kind,)
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT json FROM reports WHERE kind=? AND key=? ORDER BY id DESC LIMIT 1", (kind, key)
            ).fetchone()
        return json.loads(row["json"]) if row else None

    # -- teacher capabilities ----------------------------------------------------------------------
    def teacher_capability(self, base_url: str, model: str) -> dict[str, Any] | None:
        """What (base_url, model) accepted last time (``updated_at`` added), or None."""
        rows = self.query("SELECT caps_json, updated_at FROM teacher_capabilities WHERE base_url=? AND model=?",
                          (base_url, model))
        if not rows:
            return None
        try:
            caps = json.loads(rows[0]["caps_json"])
        except ValueError:
            return None
        return {**caps, "updated_at": rows[0]["updated_at"]} if isinstance(caps, dict) else None

    def set_teacher_capability(self, base_url: str, model: str, caps: dict[str, Any]) -> None:
        self.execute("INSERT INTO teacher_capabilities(base_url, model, caps_json, updated_at) VALUES (?,?,?,?) "
                     "ON CONFLICT(base_url, model) DO UPDATE SET caps_json=excluded.caps_json, "
                     "updated_at=excluded.updated_at", (base_url, model, json.dumps(caps, sort_keys=True), time.time()))

    def forget_teacher_capability(self, base_url: str | None = None, model: str | None = None) -> int:
        """Forget what endpoints accepted (all of them, one base URL, or one (base_url, model)); rows removed."""
        sql, params = "DELETE FROM teacher_capabilities WHERE 1=1", []
        if base_url is not None:
            sql, params = sql + " AND base_url=?", [*params, base_url]
        if model is not None:
            sql, params = sql + " AND model=?", [*params, model]
        return self.execute(sql, params).rowcount

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


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
