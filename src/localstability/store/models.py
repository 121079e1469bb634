"""The tables. SQLite by default, PostgreSQL through LOCALSTABILITY_DATABASE_URL."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from localstability.protocol import FINISHED, GenerationStatus

__all__ = ["FINISHED", "GenerationStatus"]  # re-exported: the column's values

MICROS_PER_CREDIT = 1_000_000


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _values(enum: type[StrEnum]) -> list[str]:
    return [member.value for member in enum]


JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True, index=True)
    profile_picture: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user")


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Micro-credits (1 credit = 1,000,000): what may be spent now, and what running
    # generations hold. Only the ledger functions change them, each with a ledger entry.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    # The prompt filter for this organization's requests (off, warn, block); None: the
    # deployment's (safety.prompt_filter).
    prompt_filter: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="organization")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "organization_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    role: Mapped[str] = mapped_column(String(32), default="MEMBER")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship(back_populates="memberships")
    organization: Mapped[Organization] = relationship(back_populates="memberships")


class ApiKey(Base):
    """An API key: only its SHA-256 hash is stored; the prefix finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)

    user: Mapped[User] = relationship()


class EntryKind(StrEnum):
    GRANT = "grant"  # credits added by an administrator (negative: taken away)
    RESERVE = "reserve"  # held from the balance before a generation runs
    CHARGE = "charge"  # a held amount spent: the generation succeeded
    REFUND = "refund"  # a held amount given back: the generation failed or was cancelled


class Generation(Base):
    """One generation request: who asked, what, what it cost and how it ended.

    A generation id is the organization's own (a client may choose it: Generation-Id), so
    the key is (organization_id, id): one organization's ids say nothing of another's.
    """

    __tablename__ = "generations"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    engine_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    # A bounded summary of the request (service.records), never the raw body.
    parameters: Mapped[dict[str, Any]] = mapped_column(JsonType)
    status: Mapped[GenerationStatus] = mapped_column(
        Enum(GenerationStatus, native_enum=False, length=16, values_callable=_values),
        index=True,
    )
    cost: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-credits
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    finish_reasons: Mapped[list[str] | None] = mapped_column(JsonType, nullable=True)
    # What the output filter found in each image it blurred (None for the others); None when
    # it blurred none.
    content_filter: Mapped[list[str | None] | None] = mapped_column(JsonType, nullable=True)
    # How it failed: the error envelope's name (e.g. generation_interrupted) and message.
    error_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # The server process that runs it (a Runner's id): what a dead one held is refunded.
    runner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Generations that ran in the same pipeline call, this one included (batching).
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Runner(Base):
    """A server process that runs generations, by a boot id no restart can share.

    It writes `seen_at` every few seconds while it lives; a runner not seen for the
    deployment's `runner_timeout_s`, or one on this host whose process is gone (or whose PID
    a new process has taken), is dead, and what it held is refunded.
    """

    __tablename__ = "runners"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the boot id
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerEntry(Base):
    """An append-only credit movement; an organization's balance is the sum of its entries."""

    __tablename__ = "ledger_entries"
    # One reserve, at most one charge and at most one refund per generation: a second
    # charge is refused by the database itself.
    __table_args__ = (
        UniqueConstraint("organization_id", "generation_id", "kind"),
        ForeignKeyConstraint(
            ["organization_id", "generation_id"],
            ["generations.organization_id", "generations.id"],
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[EntryKind] = mapped_column(
        Enum(EntryKind, native_enum=False, length=16, values_callable=_values)
    )
    amount: Mapped[int] = mapped_column(BigInteger)  # micro-credits
    balance_after: Mapped[int] = mapped_column(BigInteger)  # the spendable balance after it
    generation_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    actor: Mapped[str | None] = mapped_column(String(320), nullable=True)
    note: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
