"""Take docs/images/playground.png: the playground page after a generation by the shipped
shapes model, in Debian's headless chromium (scripts/setup-services.sh).

Run once by hand, from the repository root, when the page changes:

    .venv/bin/python scripts/playground_screenshot.py [--out docs/images/playground.png]

It starts its own `localstability serve` in a temporary folder (a new database, its first
key) and stops it; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from localstability.testing import start_server

CHROMIUM = "/usr/bin/chromium"
PROMPT = "a small yellow triangle in the center on a blue background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/playground.png"))
    out = parser.parse_args().out.resolve()
    with tempfile.TemporaryDirectory(prefix="playground-") as folder:
        config = Path(folder) / "localstability.toml"
        config.write_text('data_dir = "data"\noffline = true\n')
        server = start_server(config, Path(folder) / "server.log")
        try:
            shoot(server.base_url, server.key, out)
        finally:
            server.stop()
    print(f"wrote {out}")


def shoot(base_url: str, key: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.goto(base_url + "/")
        page.fill("#key", key)
        expect(page.locator("#engine")).to_have_value("localstability-shapes-v1")
        page.fill("#prompts .prompt:first-child .text", PROMPT)
        page.fill("#prompts .prompt:nth-child(2) .text", "blurry")
        for field, value in (("steps", "30"), ("seed", "11"), ("samples", "4")):
            page.fill(f"#{field}", value)
        page.click("#generate")
        expect(page.locator("#gallery figure")).to_have_count(4, timeout=300_000)
        expect(page.locator("#progress-text")).to_have_text("succeeded")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
