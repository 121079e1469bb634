"""The playground (a front door of its own): GET / answers a web page, and /playground/<file>
its script, style and engine table, all files shipped in the package (src/localstability/web).

The page is a client of the public REST API only: it calls the same /v1 endpoints as every
other client, with the key its user pastes (docs/playground.md). So the server side is just
these files: no key, no service, and nothing in the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from localstability import errors

WEB = Path(__file__).resolve().parents[2] / "web"

# Every file the page may load, with its type; any other name is 404 (no path from the URL
# ever reaches the file system).
ASSETS = {
    "playground.js": "text/javascript",
    "api.js": "text/javascript",
    "engines.js": "text/javascript",
    "stage.js": "text/javascript",
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


@router.get("/playground/{name}")
def playground_asset(name: str) -> FileResponse:
    """One of the page's files."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise errors.NotFound(f"no playground file {name!r}")
    return FileResponse(WEB / name, media_type=media_type, headers=HEADERS)
