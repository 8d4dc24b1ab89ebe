"""The schema as SQLAlchemy Core tables: one definition that becomes SQLite or PostgreSQL DDL.

Why Core tables and not hand-written DDL: the same schema must exist on both engines (``REAL`` is single
precision on PostgreSQL, ``INTEGER PRIMARY KEY`` is a rowid on SQLite and a sequence on PostgreSQL, partial
indexes are spelled per dialect), and Alembic migrations (store/migrations/) start from it.  It is schema v5 of
the legacy SQLite migrations in :mod:`llm_flywheel.store.schema`; ``tests/test_store_backends.py`` checks that a
legacy SQLite file and a fresh one have the same columns.  Queries stay hand-written, portable SQL in the mixins.

Frozen at the baseline revision (``v5_baseline`` creates exactly these tables): a schema change is a new Alembic
revision in store/migrations/versions/ (``op.add_column``/``op.create_table``), never an edit here, so a store
created today and one migrated from an old revision end up the same.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()


def _pk() -> Column:
    return Column("id", Integer, primary_key=True, autoincrement=True)


datasets = Table(
    "datasets", metadata,
    Column("name", Text, primary_key=True),
    Column("task_json", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

items = Table(
    "items", metadata,
    _pk(),
    Column("dataset", Text, ForeignKey("datasets.name"), nullable=False),
    Column("source_ref", Text, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("modality", Text, nullable=False),
    Column("blob_path", Text),
    Column("text", Text),
    Column("features_json", Text),
    Column("source_split", Text),
    Column("split", Text),
    Column("gold_label", Text),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("dataset", "source_ref"),
)
Index("items_hash", items.c.content_hash)
Index("items_split", items.c.dataset, items.c.split)

teacher_answers = Table(
    "teacher_answers", metadata,
    _pk(),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("pass_index", Integer, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("label", Text),
    Column("confidence", Float),
    Column("label_logprob", Float),
    Column("logprobs_json", Text),
    Column("reason", Text),
    Column("raw_text", Text),
    Column("tokens_in", Integer),
    Column("tokens_out", Integer),
    Column("cost_usd", Float),
    Column("latency_s", Float),
    Column("error_kind", Text),
    Column("error_detail", Text),
    Column("run_id", Integer),
    Column("created_at", Float, nullable=False),
)
# A final answer is cached once per (content, model, prompt, pass): the partial unique index is what makes a
# second process's INSERT ... ON CONFLICT DO NOTHING a no-op instead of a second paid row.
Index("teacher_answers_final", teacher_answers.c.content_hash, teacher_answers.c.model,
      teacher_answers.c.prompt_version, teacher_answers.c.pass_index, unique=True,
      sqlite_where=text("ok = 1"), postgresql_where=text("ok = 1"))
Index("teacher_answers_item", teacher_answers.c.item_id)

labels = Table(
    "labels", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("source", Text, nullable=False),
    Column("label", Text),
    Column("quality", Float),
    Column("soft_json", Text),
    Column("status", Text, nullable=False),
    Column("provenance", Text),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("item_id", "source"),
)

reviews = Table(
    "reviews", metadata,
    _pk(),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("label", Text, nullable=False),
    Column("reviewer", Text),
    Column("note", Text),
    Column("created_at", Float, nullable=False),
)

review_queue = Table(
    "review_queue", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True, autoincrement=False),
    Column("reason", Text, nullable=False),
    Column("score", Float),
    Column("created_at", Float, nullable=False),
    Column("resolved_at", Float),
)

runs = Table(
    "runs", metadata,
    _pk(),
    Column("kind", Text, nullable=False),
    Column("config_json", Text),
    Column("status", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)

models = Table(
    "models", metadata,
    _pk(),
    Column("version", Text, nullable=False, unique=True),
    Column("dataset", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("metrics_json", Text),
    Column("meta_json", Text),
    Column("round", Integer),
    Column("promoted", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Float, nullable=False),
    Column("role", Text, nullable=False, server_default=text("'student'")),
    # Legacy SQLite files enforce this with two triggers (schema v2); a CHECK says the same on both engines.
    CheckConstraint("NOT (promoted = 1 AND role = 'reference')",
                    name="a_reference_model_trained_on_gold_cannot_be_promoted"),
)

rounds = Table(
    "rounds", metadata,
    _pk(),
    Column("run_id", Integer, ForeignKey("runs.id")),
    Column("dataset", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("model_version", Text),
    Column("metrics_json", Text),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)

cascade_log = Table(
    "cascade_log", metadata,
    _pk(),
    Column("ts", Float, nullable=False),
    Column("dataset", Text),
    Column("item_id", Integer),
    Column("content_hash", Text),
    Column("source", Text, nullable=False),
    Column("label", Text),
    Column("confidence", Float),
    Column("student_label", Text),
    Column("student_confidence", Float),
    Column("teacher_label", Text),
    Column("model_version", Text),
    Column("threshold", Float),
    Column("latency_ms", Float),
    Column("round", Integer),
    Column("origin", Text),
    Column("payload_ref", Text),
    Column("collected_at", Float),
)
Index("cascade_log_ts", cascade_log.c.ts)

reports = Table(
    "reports", metadata,
    _pk(),
    Column("kind", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("json", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("reports_kind", reports.c.kind, reports.c.key)

teacher_capabilities = Table(
    "teacher_capabilities", metadata,
    Column("base_url", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("caps_json", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("base_url", "model"),
)

served_teacher_answers = Table(
    "served_teacher_answers", metadata,
    Column("content_hash", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("label", Text),
    Column("confidence", Float),
    Column("tokens_in", Integer),
    Column("tokens_out", Integer),
    Column("cost_usd", Float),
    Column("latency_s", Float),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("content_hash", "model", "prompt_version"),
)

teacher_batches = Table(
    "teacher_batches", metadata,
    _pk(),
    Column("submission", Text, nullable=False, unique=True),
    Column("dataset", Text, nullable=False),
    Column("base_url", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("input_file_id", Text),
    Column("batch_id", Text),
    Column("status", Text, nullable=False),
    Column("output_file_id", Text),
    Column("error_file_id", Text),
    Column("n_lines", Integer, nullable=False),
    Column("reserved_usd", Float),
    Column("cost_usd", Float),
    Column("price_ratio", Float, nullable=False),
    Column("detail", Text),
    Column("run_id", Integer),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("collected_at", Float),
)
Index("teacher_batches_open", teacher_batches.c.model, teacher_batches.c.prompt_version,
      teacher_batches.c.collected_at)

teacher_batch_lines = Table(
    "teacher_batch_lines", metadata,
    Column("batch", Integer, ForeignKey("teacher_batches.id"), nullable=False),
    Column("custom_id", Text, nullable=False),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("pass_index", Integer, nullable=False),
    Column("answer_id", Integer),
    PrimaryKeyConstraint("batch", "custom_id"),
)
Index("teacher_batch_lines_key", teacher_batch_lines.c.content_hash, teacher_batch_lines.c.pass_index)
