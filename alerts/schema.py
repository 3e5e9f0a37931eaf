"""The durable log's tables and its forward-only migrations.

Why not Alembic: CalGuard owns its schema and upgrades it itself at startup, on SQLite and
PostgreSQL alike, inside one transaction, with no ini file or script directory to ship
beside a bedside install. Migrations are numbered, applied in order, recorded in
``calguard_schema``, never edited once released, and only ever add (tables, columns,
indexes): a newer CalGuard upgrades an older log in place and loses nothing. Should the
schema outgrow this, Alembic can adopt the database by stamping the last version here.

Times are integer microseconds since the epoch (UTC), exactly as the engine counts them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "MIGRATIONS",
    "alert_transitions",
    "audit_chain",
    "input_blocks",
    "input_sources",
    "inputs",
    "library_steps",
    "library_versions",
    "log_exports",
    "log_identity",
    "log_writers",
    "metadata",
    "migrate",
    "migrate_exclusively",
    "monitor_leases",
    "schema_version",
    "sessions",
    "snapshots",
    "users",
]

metadata = MetaData()
#: PostgreSQL advisory lock held while migrating: one process at a time ("calg")
_PG_MIGRATION_LOCK = 0x6361_6C67
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
_Id = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "calguard_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_us", BigInteger, nullable=False),
)

library_versions = Table(
    "library_versions",
    metadata,
    Column("version", String(80), primary_key=True),
    Column("name", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("first_seen_us", BigInteger, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("mode", String(16), nullable=False),  # live | training | demo | replay
    Column("site", Text),  # the site config's name (live, training); None for replay
    Column("source", Text, nullable=False),
    Column("library_version", String(80), nullable=False),
    Column("started_us", BigInteger, nullable=False),  # wall clock
    Column("ended_us", BigInteger),
    Column("first_alert_id", Integer, nullable=False),
)

inputs = Table(
    "inputs",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("session_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),  # order of arrival within the session
    Column("t_us", BigInteger),  # the event's own time, when it had a valid one
    Column("source", Text, nullable=False),
    Column("line_no", Integer),
    Column("status", String(16), nullable=False),  # accepted | rejected | duplicate | out_of_order
    Column("reason", Text),
    Column("event_type", String(32)),
    Column("pump", String(64)),
    Column("channel", String(64)),
    Column("bed", String(64)),
    Column("line", String(64)),
    Column("raw", Text, nullable=False),
    Column("raw_bytes", Integer, nullable=False),
    Column("raw_sha256", String(64)),  # set when ``raw`` is not the exact input bytes
    # version 8: when the row was committed (wall clock; None before version 8): what
    # retention prunes by. Not part of the row the audit chain digests.
    Column("logged_us", BigInteger),
    # Inputs are the bulk of the log (one row per reading): indexed only for the questions
    # people ask of them - when, and which pump. Rows are appended in id order.
    Index("ix_inputs_t", "t_us"),
    Index("ix_inputs_pump", "pump", "channel"),
)

alert_transitions = Table(
    "alert_transitions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("session_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("t_us", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("alert_id", String(32), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("bed", String(64)),
    Column("line", String(64)),
    Column("pump", String(64)),
    Column("channel", String(64)),
    Column("value", String(64)),
    Column("limit_value", String(64)),
    Column("message", Text, nullable=False),
    Column("library_version", String(80), nullable=False),
    Column("latched", Boolean, nullable=False, default=False),
    Column("alert_line", Text, nullable=False),  # the exact JSON line that was emitted
    Index("ix_transitions_session_seq", "session_id", "seq"),
    Index("ix_transitions_alert", "alert_id"),
    Index("ix_transitions_t", "t_us"),
)

# Version 8: the bulk of the inputs - accepted readings - kept compactly, one row per batch
# and session (calguard.alerts.blocks): a zlib payload of the rows' columns, the source as
# a small integer. On PostgreSQL the table is partitioned by day of ``logged_us``
# (calguard.alerts.partitions), so that retention drops whole days.
input_sources = Table(
    "input_sources",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False, unique=True),
)

input_blocks = Table(
    "input_blocks",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("logged_us", BigInteger, nullable=False),  # the commit's wall clock
    Column("session_id", BigInteger, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("t_min", BigInteger, nullable=False),  # the readings' own times
    Column("t_max", BigInteger, nullable=False),
    Column("format", SmallInteger, nullable=False),
    Column("beds", LargeBinary, nullable=False),  # zlib JSON [[bed, 15-min bucket], ...]
    Column("payload", LargeBinary, nullable=False),  # zlib JSON of the rows' columns
    Index("ix_input_blocks_session", "session_id", "last_seq"),
    Index("ix_input_blocks_t", "t_max"),
)

# Version 8: what ``calguard export`` wrote (the SHA-256 of the exported text, the seqs it
# covers) and when a copy of it was verified (``calguard log verify-export FILE``):
# retention drops no input that is not in a verified export.
log_exports = Table(
    "log_exports",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("exported_us", BigInteger, nullable=False),
    Column("session_id", BigInteger, nullable=False),
    Column("first_seq", BigInteger),  # None: the session had no input yet
    Column("last_seq", BigInteger),
    Column("inputs", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("verified_us", BigInteger),
    Column("verified_path", Text),
)


audit_chain = Table(
    "audit_chain",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),  # 1, 2, 3 ... no gaps
    Column("session_id", BigInteger, nullable=False),
    Column("t_us", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),  # transition | action | action-refused
    Column("actor", String(200)),  # who acted (actions; and acknowledged/... lines)
    Column("payload", Text, nullable=False),  # the exact alert line, or the action as received
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),  # keyed: the HMAC; legacy: the SHA-256
    # version 6: the key's id (None: a legacy, unkeyed entry), the table rows the entry
    # covers and their SHA-256 as stored (calguard.alerts.chain)
    Column("key_id", String(16)),
    Column("subject", String(80)),
    Column("digest", String(64)),
    Index("ix_audit_t", "t_us"),
)


# Which database this is: a random id made with the schema. The local spool of a log
# writer is kept per database identity, so rows spooled for one database can never be
# drained into another that happens to answer at the same URL.
log_identity = Table(
    "log_identity",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_us", BigInteger, nullable=False),
)

# One row per log writer (one per process run): the number of its last batch committed,
# updated in the same transaction as the batch. A batch that reached the database and was
# spooled as well (a commit whose answer was lost with the connection) is thus written
# exactly once when the spool is drained.
log_writers = Table(
    "log_writers",
    metadata,
    Column("writer", String(32), primary_key=True),
    Column("started_us", BigInteger, nullable=False),
    Column("last_batch", BigInteger, nullable=False),
)


# The people who act on alarms: one account each, with a role (the library's permissions
# say what each role may do) and an Argon2id hash of the password (PHC string: the
# parameters travel with the hash). Accounts are disabled, never deleted: the log names
# them. Times are wall-clock microseconds.
users = Table(
    "users",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("role", String(32), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_us", BigInteger, nullable=False),
    Column("changed_us", BigInteger, nullable=False),  # password, role or state
)


# The pharmacist's lifecycle of the drug library (calguard.alerts.library_store): each
# step - a draft checked, an approval with the warnings it acknowledged, a publication to a
# unit, a rollback - one row, by an authenticated account, with the audit-chain entry that
# records it. The library's text is in library_versions (by its content hash); what a unit
# runs is its newest publish or rollback. Times are wall-clock microseconds.
library_steps = Table(
    "library_steps",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("t_us", BigInteger, nullable=False),
    Column("step", String(16), nullable=False),  # draft | approve | publish | rollback
    Column("version", String(80), nullable=False),  # the content hash (library_versions)
    Column("unit", Text),  # publish, rollback: the site config's name
    Column("profile", String(40)),  # publish, rollback: the care-area profile the unit runs
    Column("actor", String(32), nullable=False),  # the account, from its verified token
    Column("role", String(32), nullable=False),
    Column("detail", Text, nullable=False),  # JSON: warnings acknowledged, approvers ...
    Column("audit_seq", BigInteger),  # the audit-chain entry of this step
    Index("ix_library_steps_unit", "unit", "id"),
    Index("ix_library_steps_version", "version"),
)


# Which monitor runs a unit now (calguard.lease): the holder renews its row every few
# seconds; a standby takes a row whose time ran out, one epoch higher, and every commit of
# a monitor checks that its epoch is still the row's (a paused monitor that wakes is fenced).
# Times are the database's own clock (``now()``), the one clock every monitor shares.
monitor_leases = Table(
    "monitor_leases",
    metadata,
    Column("unit", String(64), primary_key=True),
    Column("holder", String(120), nullable=False),  # host, process and a random part
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


# The engine's and the alarm layer's state now and then (calguard.monitor.snapshot), so that
# a restart replays only the inputs after the latest one (calguard.alerts.snapshots). ``seq``
# is the last input of the session the snapshot includes; ``t_us`` the engine's time then.
snapshots = Table(
    "snapshots",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("session_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("t_us", BigInteger, nullable=False),
    Column("site", Text),
    Column("format_version", Integer, nullable=False),
    Column("library_version", String(80), nullable=False),
    Column("created_us", BigInteger, nullable=False),  # wall clock
    Column("payload", LargeBinary, nullable=False),  # zlib-compressed JSON
    Index("ix_snapshots_session", "session_id", "seq"),
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection, int], None]  # (connection, now in µs)


def _v1(conn: Connection, _now_us: int) -> None:
    # Frozen: if a later migration changes one of these tables, give this migration its
    # own copy of the table as it was at version 1.
    metadata.create_all(
        conn, tables=[library_versions, sessions, inputs, alert_transitions], checkfirst=True
    )


def _v2(conn: Connection, _now_us: int) -> None:
    metadata.create_all(conn, tables=[audit_chain], checkfirst=True)


def _v3(conn: Connection, now_us: int) -> None:
    metadata.create_all(conn, tables=[log_identity, log_writers], checkfirst=True)
    if conn.execute(select(log_identity.c.id)).first() is None:
        row = {"id": uuid.uuid4().hex, "created_us": now_us}
        conn.execute(insert(log_identity), [row])


def _v4(conn: Connection, _now_us: int) -> None:
    # sessions.site: a monitor warm-starts only from its own site's live sessions
    if "site" not in {c["name"] for c in inspect(conn).get_columns("sessions")}:
        conn.execute(text("ALTER TABLE sessions ADD COLUMN site TEXT"))


def _v5(conn: Connection, _now_us: int) -> None:
    metadata.create_all(conn, tables=[users], checkfirst=True)


def _v6(conn: Connection, _now_us: int) -> None:
    # a keyed audit chain (a fresh log made them at version 2 already)
    have = {c["name"] for c in inspect(conn).get_columns("audit_chain")}
    for name, kind in (
        ("key_id", "VARCHAR(16)"),
        ("subject", "VARCHAR(80)"),
        ("digest", "VARCHAR(64)"),
    ):
        if name not in have:
            conn.execute(text(f"ALTER TABLE audit_chain ADD COLUMN {name} {kind}"))


def _v7(conn: Connection, _now_us: int) -> None:
    metadata.create_all(conn, tables=[library_steps], checkfirst=True)


def _v8(conn: Connection, _now_us: int) -> None:
    if "logged_us" not in {c["name"] for c in inspect(conn).get_columns("inputs")}:
        conn.execute(text("ALTER TABLE inputs ADD COLUMN logged_us BIGINT"))
    metadata.create_all(conn, tables=[input_sources, log_exports], checkfirst=True)
    if conn.dialect.name != "postgresql":
        metadata.create_all(conn, tables=[input_blocks], checkfirst=True)
    elif not inspect(conn).has_table("input_blocks"):
        for statement in _PG_PARTITIONED_BLOCKS:
            conn.execute(text(statement))


# PostgreSQL: a partitioned table's key must hold the partition key; a default partition
# takes any row no day's partition does (a batch never fails for want of a partition).
_PG_PARTITIONED_BLOCKS = (
    """CREATE TABLE input_blocks (
        id BIGSERIAL, logged_us BIGINT NOT NULL, session_id BIGINT NOT NULL,
        first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, rows INTEGER NOT NULL,
        t_min BIGINT NOT NULL, t_max BIGINT NOT NULL, format SMALLINT NOT NULL,
        beds BYTEA NOT NULL, payload BYTEA NOT NULL, PRIMARY KEY (id, logged_us)
    ) PARTITION BY RANGE (logged_us)""",
    "CREATE TABLE input_blocks_default PARTITION OF input_blocks DEFAULT",
    "CREATE INDEX ix_input_blocks_session ON input_blocks (session_id, last_seq)",
    "CREATE INDEX ix_input_blocks_t ON input_blocks (t_max)",
)


def _v10(conn: Connection, _now_us: int) -> None:
    metadata.create_all(conn, tables=[monitor_leases], checkfirst=True)


def _v9(conn: Connection, _now_us: int) -> None:
    metadata.create_all(conn, tables=[snapshots], checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "inputs, alert transitions, sessions and library versions", _v1),
    Migration(2, "tamper-evident audit chain of alert transitions and user actions", _v2),
    Migration(3, "database identity and log writers' batch marks (the local spool)", _v3),
    Migration(4, "the site of each session, so training and other sites never warm-start one", _v4),
    Migration(5, "people's accounts: role, Argon2id password hash, disabled", _v5),
    Migration(6, "a keyed audit chain covering alert transitions and batches of inputs", _v6),
    Migration(7, "the drug library's lifecycle: drafts, approvals, publications, rollbacks", _v7),
    Migration(8, "readings in compact blocks (PostgreSQL: by day); exports; retention", _v8),
    Migration(9, "snapshots of the engine and alarm state: a restart replays what follows", _v9),
    Migration(10, "leases: which monitor runs each unit, and its fencing epoch", _v10),
)


def migrate(conn: Connection, now_us: int) -> list[int]:
    """Bring the schema up to the newest version; returns the versions applied."""
    metadata.create_all(conn, tables=[schema_version], checkfirst=True)
    current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
    newest = MIGRATIONS[-1].version
    if current > newest:
        raise RuntimeError(
            f"the log's schema is version {current}, newer than this CalGuard knows ({newest}); "
            "upgrade CalGuard rather than write to it"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version > current:
            migration.apply(conn, now_us)
            row: dict[str, Any] = {
                "version": migration.version,
                "description": migration.description,
                "applied_us": now_us,
            }
            conn.execute(insert(schema_version), [row])
            applied.append(migration.version)
    return applied


async def migrate_exclusively(conn: AsyncConnection, now_us: int) -> list[int]:
    """``migrate`` in ``conn``'s transaction, one process at a time, whoever opens the log
    (a monitor, the accounts, the library store, a prune, a lease): PostgreSQL under an
    advisory lock; SQLite with its write lock taken first - its driver runs DDL outside any
    transaction, so two processes would each find a table missing and both create it."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    else:
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
    return await conn.run_sync(migrate, now_us)
