"""Administration commands: users, organizations, members, credits, the ledger, generations.

Each command opens the deployment's database (migrating it if needed), does one thing in one
transaction and prints a short answer; `--json` gives machine-readable output where a list
is printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from localstability import errors
from localstability.config import load_settings

users_app = typer.Typer(help="Users.", no_args_is_help=True)
orgs_app = typer.Typer(help="Organizations, their members and their credits.", no_args_is_help=True)
ledger_app = typer.Typer(help="The credit ledger and the generation records.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (or LOCALSTABILITY_CONFIG)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
OrgOption = Annotated[str, typer.Option("--org", help="The organization's id (org-...).")]


@contextmanager
def database_session(config: Path | None, write: bool = True) -> Iterator[Session]:
    """A session on the configured database, committed at the end when `write`.

    An error of the API's hierarchy (no such user, too few credits...) becomes a one-line
    message and exit status 1.
    """
    from localstability.store.db import Database

    try:
        settings = load_settings(config)
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"no such configuration file: {exc.filename}") from None
    database = Database(settings.sqlalchemy_url)
    try:
        with database.session.begin() if write else database.session() as session:
            yield session
    except errors.ApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.dispose()


def _print(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    typer.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email (unique).")],
    org: Annotated[
        str | None,
        typer.Option(help="Join this organization; unset: a new organization of their own."),
    ] = None,
    role: Annotated[str, typer.Option(help="OWNER, ADMIN or MEMBER.")] = "MEMBER",
    profile_picture: Annotated[str | None, typer.Option(help="A URL.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a user (no key: `keys create --email` makes one)."""
    from localstability.store import accounts

    with database_session(config) as session:
        user = accounts.add_user(session, email, profile_picture)
        if org is None:
            org = accounts.create_organization(session, f"{email}'s organization").id
            role = "OWNER"
        accounts.add_member(session, email, org, role, default=True)
        typer.echo(f"{user.id}  {email}  default organization {org}")


@users_app.command("list")
def users_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Every user and the organizations they belong to."""
    from localstability.store import accounts

    with database_session(config, write=False) as session:
        rows = [
            {
                "id": user.id,
                "email": user.email,
                "organizations": ",".join(
                    f"{m.organization_id}:{m.role}{'*' if m.is_default else ''}"
                    for m in user.memberships
                ),
            }
            for user in accounts.list_users(session)
        ]
    _print(rows, as_json, ["id", "email", "organizations"])


@orgs_app.command("create")
def orgs_create(
    name: Annotated[str, typer.Option(help="The organization's name.")],
    credits: Annotated[float, typer.Option(help="Credits granted at once.")] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Create an organization; prints its id."""
    from localstability.store import accounts, ledger

    with database_session(config) as session:
        org = accounts.create_organization(session, name)
        if credits:
            ledger.grant(session, org.id, ledger.micros(credits), actor="cli", note="created")
        typer.echo(org.id)


@orgs_app.command("list")
def orgs_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Every organization with its balance, its reserved credits and its members."""
    from localstability.store import accounts, ledger

    with database_session(config, write=False) as session:
        rows = [
            {
                "id": org.id,
                "name": org.name,
                "credits": ledger.credits(org.balance),
                "reserved": ledger.credits(org.reserved),
                "members": ",".join(f"{m.user.email}:{m.role}" for m in org.memberships),
            }
            for org in accounts.list_organizations(session)
        ]
    _print(rows, as_json, ["id", "name", "credits", "reserved", "members"])


@orgs_app.command("add-member")
def orgs_add_member(
    org: OrgOption,
    email: Annotated[str, typer.Option(help="The user's email.")],
    role: Annotated[str, typer.Option(help="OWNER, ADMIN or MEMBER.")] = "MEMBER",
    default: Annotated[
        bool, typer.Option("--default", help="Bill this organization when a request names none.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Add a user to an organization (or change their role there)."""
    from localstability.store import accounts

    with database_session(config) as session:
        membership = accounts.add_member(session, email, org, role, default)
        typer.echo(
            f"{email} is {membership.role} of {org}"
            + (" (default)" if membership.is_default else "")
        )


@orgs_app.command("grant")
def orgs_grant(
    org: OrgOption,
    credits: Annotated[float, typer.Argument(help="Credits to add; negative takes them away.")],
    note: Annotated[str | None, typer.Option(help="Why, kept in the ledger.")] = None,
    config: ConfigOption = None,
) -> None:
    """Grant credits to an organization (one ledger entry); prints the new balance."""
    from localstability.store import ledger

    with database_session(config) as session:
        entry = ledger.grant(session, org, ledger.micros(credits), actor="cli", note=note)
        typer.echo(f"{org}: {ledger.credits(entry.balance_after):g} credits")


@ledger_app.command("show")
def ledger_show(
    org: OrgOption,
    limit: Annotated[int, typer.Option(help="The newest N entries.")] = 50,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """An organization's newest ledger entries, and whether its balance adds up."""
    from localstability.store import ledger

    with database_session(config, write=False) as session:
        check = ledger.audit(session, org)
        rows = [
            {
                "id": e.id,
                "time": e.created_at.isoformat(timespec="seconds"),
                "kind": e.kind.value,
                "credits": ledger.credits(e.amount),
                "balance_after": ledger.credits(e.balance_after),
                "generation": e.generation_id or "",
                "note": e.note or "",
            }
            for e in ledger.entries(session, org, limit)
        ]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "entries": rows,
                    "balance": ledger.credits(check.balance),
                    "reserved": ledger.credits(check.reserved),
                    "adds_up": check.adds_up,
                },
                indent=2,
            )
        )
        return
    _print(rows, False, ["id", "time", "kind", "credits", "balance_after", "generation", "note"])
    verdict = "adds up" if check.adds_up else "DOES NOT ADD UP"
    typer.echo(
        f"balance {ledger.credits(check.balance):g}, reserved "
        f"{ledger.credits(check.reserved):g}: the ledger {verdict}"
    )
    if not check.adds_up:
        raise typer.Exit(2)


@ledger_app.command("generations")
def ledger_generations(
    org: OrgOption,
    limit: Annotated[int, typer.Option(help="The newest N generations.")] = 20,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """An organization's newest generation records: engine, task, status, cost, time taken."""
    from localstability.store import ledger
    from localstability.store.models import Generation

    with database_session(config, write=False) as session:
        records = session.scalars(
            select(Generation)
            .where(Generation.organization_id == org)
            .order_by(Generation.created_at.desc())
            .limit(limit)
        ).all()
        rows = [
            {
                "id": g.id,
                "created": g.created_at.isoformat(timespec="seconds"),
                "engine": g.engine_id,
                "task": g.task,
                "status": g.status.value,
                "credits": ledger.credits(g.cost),
                "seconds": round((g.finished_at - g.started_at).total_seconds(), 2)
                if g.finished_at and g.started_at
                else "",
                "finish": ",".join(g.finish_reasons or []) or (g.error or "")[:40],
            }
            for g in records
        ]
    _print(
        rows, as_json, ["id", "created", "engine", "task", "status", "credits", "seconds", "finish"]
    )
