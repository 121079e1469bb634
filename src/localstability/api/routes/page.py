"""The playground (a front door of its own): GET / answers a web page, /playground/<file> its
scripts and style, all files shipped in the package (src/localstability/web), and
/playground/engines.json what the page needs to know of each enabled engine.

The page is a client of the public REST API only: it calls the same /v1 endpoints as every
other client, with the key its user pastes (docs/playground.md). So the server side is just
these files and the engine table: no service, and nothing in the OpenAPI document.

The engine table is built from the server's own rules (engines.py: tasks, default size,
EngineSpec.allowed_sizes, takes_prompts), so the page keeps no copy of them and follows an
engine the configuration adds. It needs no key, as the page fetches it before one is pasted:
it tells nothing a key would protect. Its ids are those of GET /readyz (also keyless), its
sizes and tasks the rules docs/api.md publishes; names and descriptions stay behind the key
(GET /v1/engines/list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from localstability import errors
from localstability.api.deps import Context
from localstability.engines import EngineSpec, Task

WEB = Path(__file__).resolve().parents[2] / "web"

# Every file the page may load, with its type; any other name is 404 (no path from the URL
# ever reaches the file system).
ASSETS = {
    "playground.js": "text/javascript",
    "api.js": "text/javascript",
    "engines.js": "text/javascript",
    "stage.js": "text/javascript",
    "loras.js": "text/javascript",
    "playground.css": "text/css",
}

# Only this origin's scripts, styles and API; images also from the page's own blob: URLs
# (results) and data: (the empty favicon). No inline script or style, no frames, no forms
# posted anywhere.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (ETag), so an upgraded server never runs a stale script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def playground() -> FileResponse:
    """The playground page."""
    return FileResponse(WEB / "index.html", media_type="text/html", headers=HEADERS)


# Declared before /playground/{name}, which would otherwise take the name.
@router.get("/playground/engines.json")
def playground_engines(context: Context) -> JSONResponse:
    """The enabled engines, as the page needs them (docs/playground.md)."""
    engines = [_described(spec) for spec in context.generation.engines()]
    return JSONResponse({"engines": engines}, headers=HEADERS)


def _described(spec: EngineSpec) -> dict[str, Any]:
    """One engine: its tasks, and where it has a size rule its default and allowed sizes."""
    sizes = spec.allowed_sizes()
    return {
        "id": spec.id,
        "tasks": [task.value for task in Task if task in spec.tasks],
        "default_size": [spec.default_width, spec.default_height] if sizes else None,
        "sizes": [list(size) for size in sizes],
        "takes_prompts": spec.takes_prompts,
    }


@router.get("/playground/{name}")
def playground_asset(name: str) -> FileResponse:
    """One of the page's files."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise errors.NotFound(f"no playground file {name!r}")
    return FileResponse(WEB / name, media_type=media_type, headers=HEADERS)
