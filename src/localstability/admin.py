"""Administration commands: users, organizations, members, credits, the ledger, generations.

Each command opens the deployment's database (migrating it if needed) and calls the same
AdminService as the admin HTTP API; lists print as short tables, or as JSON with --json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from localstability import errors
from localstability.config import CONFIG_ENV, Settings, load_settings
from localstability.engines import EngineSpec
from localstability.safety.settings import PromptFilterMode
from localstability.service.admin import AdminService

users_app = typer.Typer(help="Users.", no_args_is_help=True)
orgs_app = typer.Typer(help="Organizations, their members and their credits.", no_args_is_help=True)
ledger_app = typer.Typer(help="The credit ledger and the generation records.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (or LOCALSTABILITY_CONFIG)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
OrgOption = Annotated[str, typer.Option("--org", help="The organization's id (org-...).")]
RoleOption = Annotated[str, typer.Option(help="OWNER, ADMIN or MEMBER.")]


def settings_of(config: Path | None) -> Settings:
    """The settings, or a short message and exit status 2 when a value is wrong."""
    try:
        return load_settings(config)
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"no such configuration file: {exc.filename}") from None
    except ValidationError as exc:
        typer.echo(f"configuration: {exc}", err=True)
        raise typer.Exit(2) from None


def config_file_of(config: Path | None) -> Path | None:
    """The configuration file named by --config or LOCALSTABILITY_CONFIG, if any."""
    named = config or os.environ.get(CONFIG_ENV)
    return Path(named).expanduser() if named else None


def engines_of(config: Path | None) -> tuple[Settings, dict[str, EngineSpec]]:
    """The settings and the engines they describe (`deployment_catalogue`): an engine of the
    operator's own whose model family can't be told is a short message and exit status 2,
    not a traceback."""
    from localstability.service.tasks import deployment_catalogue

    settings = settings_of(config)
    try:
        return settings, deployment_catalogue(settings)
    except ValueError as exc:
        typer.echo(f"configuration: {exc}", err=True)
        raise typer.Exit(2) from None


def served_settings(config: Path | None) -> Settings:
    """The settings of a process that serves engines (`serve`, `worker`), its engines
    checked before it starts (and the engines it is to preload)."""
    settings, catalogue = engines_of(config)
    if settings.preload != "all":
        enabled = [i for i in catalogue if settings.engine_config(i).enabled]
        unknown = [i for i in settings.preload if i not in enabled]
        if unknown:
            typer.echo(
                f"configuration: preload: not an enabled engine: {', '.join(unknown)}", err=True
            )
            raise typer.Exit(2)
    return settings


@contextmanager
def admin_service(config: Path | None) -> Iterator[AdminService]:
    """The AdminService of the configured database.

    An error of the API's hierarchy (no such user, too few credits...) becomes a one-line
    message and exit status 1.
    """
    from localstability.store.db import Database

    database = Database(settings_of(config).sqlalchemy_url)
    try:
        yield AdminService(database, actor="cli")
    except errors.ApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.dispose()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ":".join(str(v) for v in value.values())
    return str(value)


def print_rows(items: Sequence[BaseModel], as_json: bool, columns: list[str]) -> None:
    """`items` as JSON, or as a table of `columns`."""
    if as_json:
        typer.echo(json.dumps([item.model_dump(mode="json") for item in items], indent=2))
        return
    if not items:
        typer.echo("(none)")
        return
    rows = [{c: _cell(item.model_dump(mode="json")[c]) for c in columns} for item in items]
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    typer.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email (unique).")],
    org: Annotated[
        str | None,
        typer.Option(help="Join this organization; unset: a new organization of their own."),
    ] = None,
    role: RoleOption = "MEMBER",
    profile_picture: Annotated[str | None, typer.Option(help="A URL.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a user (no key: `keys create --email` makes one)."""
    with admin_service(config) as admin:
        user = admin.create_user(email, org, role, profile_picture)
    default = next(o.id for o in user.organizations if o.is_default)
    typer.echo(f"{user.id}  {email}  default organization {default}")


@users_app.command("list")
def users_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Every user and the organizations they belong to."""
    with admin_service(config) as admin:
        print_rows(admin.users(), as_json, ["id", "email", "organizations"])


@orgs_app.command("create")
def orgs_create(
    name: Annotated[str, typer.Option(help="The organization's name.")],
    credits: Annotated[float, typer.Option(help="Credits granted at once.")] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Create an organization; prints its id."""
    with admin_service(config) as admin:
        typer.echo(admin.create_organization(name, credits).id)


@orgs_app.command("list")
def orgs_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Every organization with its balance, its reserved credits and its members."""
    with admin_service(config) as admin:
        print_rows(
            admin.organizations(),
            as_json,
            ["id", "name", "credits", "reserved", "members", "prompt_filter"],
        )


@orgs_app.command("add-member")
def orgs_add_member(
    org: OrgOption,
    email: Annotated[str, typer.Option(help="The user's email.")],
    role: RoleOption = "MEMBER",
    default: Annotated[
        bool, typer.Option("--default", help="Bill this organization when a request names none.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Add a user to an organization (or change their role there)."""
    with admin_service(config) as admin:
        member = admin.add_member(org, email, role, default)
    typer.echo(f"{email} is {member.role} of {org}" + (" (default)" if member.is_default else ""))


@orgs_app.command("grant")
def orgs_grant(
    org: OrgOption,
    credits: Annotated[float, typer.Argument(help="Credits to add; negative takes them away.")],
    note: Annotated[str | None, typer.Option(help="Why, kept in the ledger.")] = None,
    config: ConfigOption = None,
) -> None:
    """Grant credits to an organization (one ledger entry); prints the new balance."""
    with admin_service(config) as admin:
        entry = admin.grant(org, credits, note)
    typer.echo(f"{org}: {entry.balance_after:g} credits")


@orgs_app.command("prompt-filter")
def orgs_prompt_filter(
    org: OrgOption,
    mode: Annotated[
        str, typer.Argument(help="off, warn or block; 'default': the deployment's setting.")
    ],
    config: ConfigOption = None,
) -> None:
    """Set an organization's own prompt filter (docs/safety.md)."""
    choices = [*PromptFilterMode, "default"]
    if mode not in choices:
        raise typer.BadParameter(f"one of {', '.join(choices)}", param_hint="MODE")
    chosen = None if mode == "default" else PromptFilterMode(mode)
    with admin_service(config) as admin:
        info = admin.set_prompt_filter(org, chosen)
    typer.echo(f"{org}: prompt filter {info.prompt_filter or 'as the deployment'}")


@ledger_app.command("show")
def ledger_show(
    org: OrgOption,
    limit: Annotated[int, typer.Option(help="The newest N entries.")] = 50,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """An organization's newest ledger entries, and whether its balance adds up."""
    with admin_service(config) as admin:
        book = admin.ledger(org, limit)
    if as_json:
        typer.echo(book.model_dump_json(indent=2))
        return
    columns = ["id", "created_at", "kind", "credits", "balance_after", "generation_id", "note"]
    print_rows(book.entries, False, columns)
    verdict = "adds up" if book.adds_up else "DOES NOT ADD UP"
    typer.echo(f"balance {book.credits:g}, reserved {book.reserved:g}: the ledger {verdict}")
    if not book.adds_up:
        raise typer.Exit(2)


@ledger_app.command("generations")
def ledger_generations(
    org: OrgOption,
    limit: Annotated[int, typer.Option(help="The newest N generations.")] = 20,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """An organization's newest generation records: engine, task, status, cost, run time."""
    with admin_service(config) as admin:
        columns = ["id", "created_at", "engine_id", "task", "status", "credits", "seconds"]
        print_rows(
            admin.generations(org, limit), as_json, [*columns, "finish_reasons", "content_filter"]
        )


@ledger_app.command("purge")
def ledger_purge(
    charged_days: Annotated[
        float | None,
        typer.Option(help="Keep charged generations' records this many days (0: all)."),
    ] = None,
    refunded_hours: Annotated[
        float | None,
        typer.Option(help="Keep failed and cancelled ones' records this many hours (0: all)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Remove generation records past their retention now (default: the configured
    generation_retention_days and refunded_retention_hours; servers purge as they run)."""
    settings = settings_of(config)
    charged = settings.generation_retention_days if charged_days is None else charged_days
    refunded = settings.refunded_retention_hours if refunded_hours is None else refunded_hours
    with admin_service(config) as admin:
        count = admin.purge(charged, refunded)
    typer.echo(f"purged {count} generation record(s)")
