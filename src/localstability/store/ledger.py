"""The credit ledger: every change of a balance is one append-only entry, in one transaction.

An organization holds two amounts, in micro-credits: `balance` (what it may spend) and
`reserved` (what its running generations hold). The entries explain both:

    balance  = grants - reserves + refunds
    reserved = reserves - charges - refunds

A reservation is a single conditional UPDATE (`balance >= cost`), so two concurrent requests
can never both spend the last credits, on SQLite or PostgreSQL. A generation leaves
`queued`/`running` once, by another conditional UPDATE, so it is charged or refunded once;
the unique (generation_id, kind) constraint backs that up in the database itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from localstability import errors
from localstability.store.models import (
    FINISHED,
    MICROS_PER_CREDIT,
    EntryKind,
    Generation,
    GenerationStatus,
    LedgerEntry,
    Organization,
    Runner,
    utcnow,
)

# The most micro-credits a grant may move or a balance may hold (a trillion credits): far
# below what a 64-bit integer column holds, so sums of them never overflow.
MAX_MICROS = 10**18


def credits(micros: int) -> float:
    """Micro-credits as the float credits the API shows."""
    return micros / MICROS_PER_CREDIT


def micros(amount: float) -> int:
    """Credits (float) as micro-credits."""
    return round(amount * MICROS_PER_CREDIT)


def organization(session: Session, organization_id: str) -> Organization:
    org = session.get(Organization, organization_id)
    if org is None:
        raise errors.NotFound(f"no organization {organization_id}")
    return org


def grant(
    session: Session,
    organization_id: str,
    amount: int,
    *,
    actor: str | None = None,
    note: str | None = None,
) -> LedgerEntry:
    """Add `amount` micro-credits (negative: take them away, never below zero; the balance
    never above MAX_MICROS)."""
    organization(session, organization_id)
    if amount == 0:
        raise errors.BadRequest(
            f"a grant moves at least one micro-credit ({credits(1):.6f} credits); "
            "this one rounds to none"
        )
    if abs(amount) > MAX_MICROS:
        raise errors.BadRequest(f"a grant moves at most {credits(MAX_MICROS):g} credits")
    balance = session.scalar(
        update(Organization)
        .where(
            Organization.id == organization_id,
            Organization.balance + amount >= 0,
            Organization.balance + amount <= MAX_MICROS,
        )
        .values(balance=Organization.balance + amount)
        .returning(Organization.balance)
    )
    if balance is None:
        if amount > 0:
            raise errors.BadRequest(
                f"a balance holds at most {credits(MAX_MICROS):g} credits; "
                f"{organization_id} would hold more"
            )
        raise errors.BadRequest(
            f"taking {credits(-amount):g} credits would leave {organization_id} below zero"
        )
    entry = LedgerEntry(
        organization_id=organization_id,
        kind=EntryKind.GRANT,
        amount=amount,
        balance_after=balance,
        actor=actor,
        note=note,
    )
    session.add(entry)
    return entry


def reserve(session: Session, generation: Generation) -> None:
    """Record `generation` as queued and hold its cost, or raise InsufficientBalance."""
    cost = generation.cost
    generation.status = GenerationStatus.QUEUED
    if cost <= 0:
        session.add(generation)
        return
    balance = session.scalar(
        update(Organization)
        .where(Organization.id == generation.organization_id, Organization.balance >= cost)
        .values(balance=Organization.balance - cost, reserved=Organization.reserved + cost)
        .returning(Organization.balance)
    )
    if balance is None:
        have = organization(session, generation.organization_id).balance
        raise errors.InsufficientBalance(
            f"this request costs {credits(cost):.6g} credits but organization "
            f"{generation.organization_id} has {credits(have):.6g}"
        )
    session.add(generation)
    session.flush()  # the generation row first: the entry refers to it
    session.add(
        LedgerEntry(
            organization_id=generation.organization_id,
            kind=EntryKind.RESERVE,
            amount=cost,
            balance_after=balance,
            generation_id=generation.id,
        )
    )


def _is(organization_id: str, generation_id: str) -> Any:
    """The WHERE clause that picks one organization's generation."""
    return (Generation.organization_id == organization_id) & (Generation.id == generation_id)


def start(session: Session, organization_id: str, generation_id: str, batch_size: int = 1) -> bool:
    """queued -> running; False when the generation already left the queue."""
    result = session.execute(
        update(Generation)
        .where(_is(organization_id, generation_id), Generation.status == GenerationStatus.QUEUED)
        .values(status=GenerationStatus.RUNNING, started_at=utcnow(), batch_size=batch_size)
    )
    return bool(getattr(result, "rowcount", 0))


def claim(
    session: Session, organization_id: str, generation_id: str, runner: str, alive_since: datetime
) -> bool:
    """queued, or running under a runner not seen since `alive_since` (or none), -> running
    under `runner`. False when the generation ended, or a live runner has it: of two
    deliveries of one job, one claims it."""
    live = select(Runner.id).where(Runner.seen_at >= alive_since, Runner.id != runner)
    result = session.execute(
        update(Generation)
        .where(
            _is(organization_id, generation_id),
            (Generation.status == GenerationStatus.QUEUED)
            | (
                (Generation.status == GenerationStatus.RUNNING)
                & (Generation.runner.is_(None) | Generation.runner.not_in(live))
            ),
        )
        .values(status=GenerationStatus.RUNNING, runner=runner, started_at=utcnow(), batch_size=1)
    )
    return bool(getattr(result, "rowcount", 0))


def batched(
    session: Session, organization_id: str, generation_id: str, runner: str, batch_size: int
) -> None:
    """A generation that `runner` claimed runs in a pipeline call with `batch_size` in all."""
    session.execute(
        update(Generation)
        .where(
            _is(organization_id, generation_id),
            Generation.status == GenerationStatus.RUNNING,
            Generation.runner == runner,
        )
        .values(batch_size=batch_size)
    )


def finish(
    session: Session,
    organization_id: str,
    generation_id: str,
    status: GenerationStatus,
    *,
    finish_reasons: list[str] | None = None,
    content_filter: list[str | None] | None = None,
    error: str | None = None,
    error_name: str | None = None,
) -> int | None:
    """End a generation: charge its hold on success, refund it otherwise.

    Returns the micro-credits charged or refunded (0 when free), or None (and moves no
    credit) when the generation had ended already.
    """
    if status not in FINISHED:
        raise ValueError(f"{status} is not a final status")
    row = session.execute(
        update(Generation)
        .where(
            _is(organization_id, generation_id),
            Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING]),
        )
        .values(
            status=status,
            finished_at=utcnow(),
            finish_reasons=finish_reasons,
            content_filter=content_filter,
            error=error[:2000] if error else None,
            error_name=error_name,
        )
        .returning(Generation.cost)
    ).first()
    if row is None:
        return None
    cost: int = row[0]
    if cost <= 0:
        return 0
    if status == GenerationStatus.SUCCEEDED:
        kind, values = EntryKind.CHARGE, {"reserved": Organization.reserved - cost}
    else:
        kind = EntryKind.REFUND
        values = {"reserved": Organization.reserved - cost, "balance": Organization.balance + cost}
    balance = session.scalar(
        update(Organization)
        .where(Organization.id == organization_id)
        .values(**values)
        .returning(Organization.balance)
    )
    session.add(
        LedgerEntry(
            organization_id=organization_id,
            kind=kind,
            amount=cost,
            balance_after=balance,
            generation_id=generation_id,
        )
    )
    return cost


def unfinished(session: Session) -> list[Generation]:
    """Generations still queued or running."""
    return list(
        session.scalars(
            select(Generation).where(
                Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING])
            )
        ).all()
    )


def unfinished_by_engine(session: Session) -> dict[tuple[str, GenerationStatus], int]:
    """How many generations are queued and running, by engine and status."""
    rows = session.execute(
        select(Generation.engine_id, Generation.status, func.count())
        .where(Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING]))
        .group_by(Generation.engine_id, Generation.status)
    ).all()
    return {(engine, GenerationStatus(status)): count for engine, status, count in rows}


def unclaimed(session: Session, before: datetime) -> list[tuple[str, str]]:
    """Generations queued since before `before` that no runner has claimed (organization id,
    generation id)."""
    rows = session.execute(
        select(Generation.organization_id, Generation.id).where(
            Generation.status == GenerationStatus.QUEUED,
            Generation.runner.is_(None),
            Generation.created_at < before,
        )
    )
    return [(org, generation_id) for org, generation_id in rows]


def purge(session: Session, status: GenerationStatus, before: datetime, limit: int = 500) -> int:
    """Remove up to `limit` records of generations that ended with `status` before `before`;
    how many went.

    A refunded generation (failed, cancelled) goes with its reserve and refund entries: they
    move the same amount both ways, so every sum of the ledger stays what it was. A charged
    one leaves its entries, which only lose their link to the record (what was spent stays
    in the books).
    """
    if status not in FINISHED:
        raise ValueError(f"{status} is not a final status")
    keys = [
        tuple(row)
        for row in session.execute(
            select(Generation.organization_id, Generation.id)
            .where(Generation.status == status, Generation.finished_at < before)
            .limit(limit)
        ).all()
    ]
    if not keys:
        return 0
    linked = tuple_(LedgerEntry.organization_id, LedgerEntry.generation_id).in_(keys)
    if status == GenerationStatus.SUCCEEDED:
        session.execute(update(LedgerEntry).where(linked).values(generation_id=None))
    else:
        session.execute(delete(LedgerEntry).where(linked))
    session.execute(
        delete(Generation).where(tuple_(Generation.organization_id, Generation.id).in_(keys))
    )
    return len(keys)


@dataclass(frozen=True)
class Audit:
    """An organization's amounts next to what its ledger entries add up to."""

    organization_id: str
    balance: int
    reserved: int
    granted: int
    reserved_total: int
    charged: int
    refunded: int

    @property
    def expected_balance(self) -> int:
        return self.granted - self.reserved_total + self.refunded

    @property
    def expected_reserved(self) -> int:
        return self.reserved_total - self.charged - self.refunded

    @property
    def adds_up(self) -> bool:
        return (
            self.balance == self.expected_balance
            and self.reserved == self.expected_reserved
            and self.balance >= 0
            and self.reserved >= 0
        )


def audit(session: Session, organization_id: str) -> Audit:
    org = organization(session, organization_id)
    sums: dict[Any, int] = dict(
        session.execute(
            select(LedgerEntry.kind, func.coalesce(func.sum(LedgerEntry.amount), 0))
            .where(LedgerEntry.organization_id == organization_id)
            .group_by(LedgerEntry.kind)
        ).all()
    )
    return Audit(
        organization_id=organization_id,
        balance=org.balance,
        reserved=org.reserved,
        granted=int(sums.get(EntryKind.GRANT, 0)),
        reserved_total=int(sums.get(EntryKind.RESERVE, 0)),
        charged=int(sums.get(EntryKind.CHARGE, 0)),
        refunded=int(sums.get(EntryKind.REFUND, 0)),
    )


def entries(session: Session, organization_id: str, limit: int = 50) -> list[LedgerEntry]:
    """The newest `limit` entries of an organization, oldest first."""
    newest = session.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.organization_id == organization_id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit)
    ).all()
    return list(reversed(newest))
