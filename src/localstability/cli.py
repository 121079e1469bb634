"""The `localstability` command: serve, mcp, keys, models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from localstability.admin import (
    ConfigOption,
    JsonOption,
    admin_service,
    config_file_of,
    engines_of,
    ledger_app,
    orgs_app,
    print_rows,
    served_settings,
    settings_of,
    users_app,
)
from localstability.jobs.base import ClusterInfo

if TYPE_CHECKING:
    from localstability.config import Settings
    from localstability.engines import EngineSpec

app = typer.Typer(help="A self-hosted Stability AI REST API v1 server.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
models_app = typer.Typer(help="Engine weights.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
app.add_typer(orgs_app, name="orgs")
app.add_typer(ledger_app, name="ledger")
app.add_typer(models_app, name="models")


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="'local' (generations run in this process) or 'celery' (on `localstability "
            "worker` processes, through redis_url): the setting `backend`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the API server."""
    from localstability.logs import configure_logging
    from localstability.serving import run

    settings = served_settings(config)
    if backend is not None:
        if backend not in ("local", "celery"):
            typer.echo(f"--backend must be local or celery, not {backend}", err=True)
            raise typer.Exit(2)
        settings = settings.model_copy(update={"backend": backend})
    configure_logging(settings.log_level, settings.log_json)
    run(settings, host or settings.host, port or settings.port)


@app.command()
def worker(
    config: ConfigOption = None,
    engines: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated engine ids this worker serves (default: every enabled "
            "engine). Run one worker per GPU (CUDA_VISIBLE_DEVICES).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a scale-out worker: take generations from Redis and run them (docs/deploy.md)."""
    from localstability.logs import configure_logging
    from localstability.worker import run_worker, worker_engines

    settings = served_settings(config)
    configure_logging(settings.log_level, settings.log_json)
    if not settings.redis_url:
        typer.echo("redis_url is not set: the broker the worker takes jobs from", err=True)
        raise typer.Exit(2)
    try:
        served = worker_engines(settings, engines.split(",") if engines else None)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    run_worker(settings, served)


@app.command()
def cluster(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show what runs the generations: live workers, their engines and jobs, queue depths."""
    import asyncio

    from localstability.jobs.board import JobBoard
    from localstability.jobs.celery_app import engine_queue
    from localstability.service.tasks import TaskBuilder

    settings = settings_of(config)
    if settings.backend != "celery" or not settings.redis_url:
        typer.echo(
            "backend local: generations run inside `localstability serve`; its queue is at "
            "GET /admin/v1/cluster"
        )
        return
    engines = [engine.id for engine in TaskBuilder(settings).engines()]
    board = JobBoard(settings.redis_url, settings.redis_prefix)

    async def read() -> ClusterInfo:
        try:
            return await board.cluster({engine: engine_queue(engine) for engine in engines})
        finally:
            await board.close()

    info = asyncio.run(read())
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    typer.echo(f"workers: {len(info.workers)}  queued: {info.queued}  running: {info.running}")
    print_rows(info.workers, False, ["host", "pid", "engines", "running", "seen_s_ago"])
    print_rows(info.queues, False, ["engine_id", "queued"])


@app.command("mcp")
def mcp_stdio(
    config: ConfigOption = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="LOCALSTABILITY_API_KEY",
            help="The API key whose user the tools act as and whose organization they bill. "
            "Prefer the environment variable: arguments show in process lists.",
            show_default=False,
        ),
    ] = None,
    organization: Annotated[
        str | None,
        typer.Option(
            envvar="LOCALSTABILITY_ORGANIZATION",
            help="Bill this organization of the key's user (like the Organization header).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the MCP tools over stdio, for desktop assistants (Claude Desktop, Cursor...)."""
    import asyncio

    from localstability import errors
    from localstability.logs import configure_logging
    from localstability.mcp.stdio import serve_stdio

    if not api_key:
        typer.echo("LOCALSTABILITY_API_KEY is not set: the API key the tools act as", err=True)
        raise typer.Exit(2)
    settings = settings_of(config)
    if settings.sqlite_file is not None and not settings.sqlite_file.exists():
        # A wrong data dir would otherwise get a new, empty database, where no key is valid.
        typer.echo(
            f"no database at {settings.sqlite_file}: set data_dir (or database_url) to the "
            "server's, or run `localstability serve` once to create it",
            err=True,
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve_stdio(settings, api_key, organization))
    except errors.ApiError as exc:
        typer.echo(f"{exc.name}: {exc.message}", err=True)
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    email: Annotated[str, typer.Option(help="The user's email; created if new.")],
    credits: Annotated[float, typer.Option(help="Credits granted to the user's organization.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Create an API key and print it (the only time it is shown)."""
    with admin_service(config) as admin:
        typer.echo(admin.create_key(email, credits).key)


@keys_app.command("list")
def keys_list(
    email: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """List keys by their prefix (keys themselves are never stored)."""
    with admin_service(config) as admin:
        columns = ["prefix", "email", "revoked", "created_at", "last_used_at"]
        print_rows(admin.keys(email), as_json, columns)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix as `keys list` shows it.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: it gets 401 from then on."""
    with admin_service(config) as admin:
        count = admin.revoke_key(prefix)
    if not count:
        typer.echo(f"no active key with prefix {prefix}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {count} key(s) with prefix {prefix}")


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Each engine, where its weights come from, and whether they are on this machine."""
    from localstability.service.tasks import weight_source, weights_state

    settings, catalogue = engines_of(config)
    typer.echo(f"{'ENGINE':38} {'FAMILY':16} {'STATE':16} WEIGHTS")
    fallbacks = False
    for engine in catalogue.values():
        engine_config = settings.engine_config(engine.id)
        source = weight_source(settings, engine)
        where = f"{source.kind}:{source.source}"
        weights, fallback = weights_state(settings, engine)
        if not engine_config.enabled:
            state = "disabled"
        elif weights == "ready":
            state = "ready"
        elif fallback is not None:
            state, fallbacks = "ready (fallback)", True
            where += f", serving {fallback.source}"
        else:
            state = "not downloaded"
        label = f"  ({engine_config.label})" if engine_config.label else ""
        typer.echo(f"{engine.id:38} {engine.family.value:16} {state:16} {where}{label}")
    if fallbacks:
        typer.echo(
            "ready (fallback): the engine's own weights are not on this machine; it serves the "
            "offline fallback shown (docs/models.md). `localstability models pull ENGINE` "
            "fetches its own where the Hub can be reached."
        )
    _echo_loras(settings, list(catalogue.values()))


def _echo_loras(settings: Settings, engines: list[EngineSpec]) -> None:
    """The LoRA adapters in lora_dir, by family (each engine of the family offers them)."""
    from localstability.service.loras import LoraFolder

    folder = LoraFolder(settings)
    offered = {e.family.value: list(folder.offered(e)) for e in engines if folder.offered(e)}
    typer.echo(f"LoRA adapters in {folder.root}:" + ("" if offered else " none"))
    for family, names in offered.items():
        typer.echo(f"  {family}: {', '.join(names)}")


@models_app.command("add")
def models_add(
    engine_id: Annotated[str, typer.Argument(help="The engine id, e.g. my-brand-xl.")],
    source: Annotated[
        str, typer.Option(help="A Hub repo id, a diffusers folder or a .safetensors file.")
    ],
    family: Annotated[
        str | None,
        typer.Option(
            help="sd1, sd2, sdxl, esrgan or latent-upscaler; unset: read from the weights."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Its name in /v1/engines/list.")] = None,
    description: Annotated[str | None, typer.Option(help="Its description there.")] = None,
    cost_factor: Annotated[
        float | None, typer.Option(help="Price relative to SDXL per pixel and step.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Add an engine of your own to the configuration file (or print what to add)."""
    from localstability.config_file import add_engine, engine_table

    local = Path(source).expanduser()
    values = {
        "source": str(local.resolve()) if local.exists() else source,
        "family": family,
        "name": name,
        "description": description,
        "cost_factor": cost_factor,
    }
    path = config_file_of(config)
    if path is None:
        typer.echo("no configuration file (--config or LOCALSTABILITY_CONFIG); add this to it:")
        typer.echo(engine_table(engine_id, values))
        return
    try:
        add_engine(path, engine_id, values)
    except ValueError as exc:
        typer.echo(f"not added: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"added {engine_id} to {path}; restart the server (and workers) to serve it")


@models_app.command("remove")
def models_remove(
    engine_id: Annotated[str, typer.Argument(help="The engine id.")],
    config: ConfigOption = None,
) -> None:
    """Remove an engine's table from the configuration file (a catalogue engine goes back to
    its defaults; one of your own is gone)."""
    from localstability.config_file import remove_engine

    path = config_file_of(config)
    if path is None:
        typer.echo("no configuration file (--config or LOCALSTABILITY_CONFIG)", err=True)
        raise typer.Exit(2)
    try:
        remove_engine(path, engine_id)
    except KeyError:
        typer.echo(f"{path} has no [engines.{engine_id}]", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(f"not removed: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"removed {engine_id} from {path}; restart the server (and workers)")


@models_app.command("pull")
def models_pull(
    engine_id: Annotated[str, typer.Argument(help="Engine id, e.g. stable-diffusion-v1-6.")],
    config: ConfigOption = None,
) -> None:
    """Fetch an engine's weights ahead of time (shows download progress)."""
    from localstability import errors
    from localstability.engines import get_engine
    from localstability.inference.loader import download
    from localstability.service.tasks import fallback_source, weight_source

    settings, catalogue = engines_of(config)
    try:
        engine = get_engine(engine_id, catalogue)
        source = weight_source(settings, engine)
        models_dir = settings.data_dir / "models"
        try:
            path = download(source, settings.offline, models_dir)
        except errors.EngineUnavailable as exc:
            fallback = fallback_source(settings, engine)
            if fallback is None:
                raise
            typer.echo(f"{exc.message}\nusing the offline fallback {fallback.source}")
            path = download(fallback, settings.offline, models_dir)
    except errors.ApiError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{engine_id}: ready at {path}")


TINY_ENGINES = {
    "stable-diffusion-v1-6": "sd1",
    "stable-diffusion-512-v2-1": "sd2",
    "stable-diffusion-xl-1024-v1-0": "sdxl",
    "stable-diffusion-xl-beta-v2-2-2": "sdxl",
    "stable-diffusion-x4-latent-upscaler": "sd-x4-upscaler",
    "esrgan-v1-x2plus": "esrgan",
    "stable-diffusion-3-5-large": "sd3",
    "stable-diffusion-3-5-large-turbo": "sd3",
    "stable-diffusion-3-5-medium": "sd3",
    "flux-1-dev": "flux",
    "flux-1-schnell": "flux-schnell",
}


def write_tiny_config(directory: Path, folders: dict[str, Path]) -> Path:
    """DIR/localstability.toml pointing every engine at the tiny models."""
    lines = [
        "# TEST FIXTURES: tiny random-weight models that make noise images, not pictures.",
        "# Written by `localstability models make-tiny`.",
        'data_dir = "data"',
        "offline = true",
        f'lora_dir = "{(directory / "loras").resolve()}"',
        "",
    ]
    for engine_id, family in TINY_ENGINES.items():
        lines += [
            f"[engines.{engine_id}]",
            f'source = "{folders[family].resolve()}"',
            'label = "tiny random-weight test fixture"',
            "",
        ]
    path = directory / "localstability.toml"
    path.write_text("\n".join(lines))
    return path


@models_app.command("make-tiny")
def models_make_tiny(
    directory: Annotated[Path, typer.Argument(help="Folder to write the models into.")],
) -> None:
    """Build tiny random-weight TEST FIXTURES of every family, offline, and a config for them."""
    from localstability.single_file import write_single_file
    from localstability.tiny import build_tiny_models
    from localstability.tiny_lora import build_tiny_loras
    from localstability.tiny_safety import build_tiny_safety_checker
    from localstability.upscalers.esrgan import write_tiny_esrgan

    directory.mkdir(parents=True, exist_ok=True)
    folders = build_tiny_models(directory, progress=lambda message: typer.echo(message))
    single = directory / "sd1-single" / "tiny-sd1.safetensors"  # not an engine of the config
    write_single_file(folders["sd1"], single, progress=lambda message: typer.echo(message))
    folders["esrgan"] = write_tiny_esrgan(directory / "esrgan" / "tiny-esrgan-x4.safetensors")
    typer.echo(f"built tiny ESRGAN x4 upscaler {folders['esrgan']}")
    loras = build_tiny_loras(directory, directory / "loras")
    typer.echo(f"built tiny LoRA adapters {', '.join(loras)} in {directory / 'loras'}")
    checker = build_tiny_safety_checker(directory / "safety-checker")
    typer.echo(f"built a tiny safety checker (the output filter's) in {checker}")
    config_path = write_tiny_config(directory, folders)
    typer.echo(f"wrote {config_path}; run: localstability serve --config {config_path}")
