"""The playground page (GET /) in a real headless Chromium (Debian's, driven by Playwright),
against the shared embedded server: a key pasted in, generations with their progress, cancel
and refund, an inpainting mask painted with the mouse, downloads, errors."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    FilePayload,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from localstability.engines import CATALOGUE, SDXL_V1_SIZES
from tests.conftest import Server, run_cli
from tests.helpers import encode, pixels, png_image, sample_picture

CHROMIUM = Path("/usr/bin/chromium")
SHAPES = "localstability-shapes-v1"
ESRGAN = "esrgan-v1-x2plus"
LATENT_UPSCALER = "stable-diffusion-x4-latent-upscaler"
SDXL = "stable-diffusion-xl-1024-v1-0"
SD21 = "stable-diffusion-512-v2-1"
SD16 = "stable-diffusion-v1-6"
SDXL_BETA = "stable-diffusion-xl-beta-v2-2-2"
STYLE, DETAIL, XL_STYLE = "tiny-sd1-style", "tiny-sd1-detail", "tiny-sdxl-style"
PROMPT = "#prompts .prompt:first-child .text"
# How long an expectation may wait for the page: an upper bound for a slow machine, never a
# measurement (each expectation returns as soon as it holds).
expect.set_options(timeout=120_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module. Missing is a failure, not a skip."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make services` (scripts/setup-services.sh) installs "
            "Debian's chromium, which these tests drive"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    """A key of its own (a new user and organization with 100 credits)."""
    return run_cli(
        "keys", "create", "--email", "playground@example.com", "--credits", "100",
        "--config", str(server.config), env=server.env,
    ).stdout.strip()  # fmt: skip


@dataclass
class Playground:
    page: Page
    requests: list[Request] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def balance(self) -> float:
        return float(self.page.locator("#balance").inner_text().replace(",", ""))


def open_playground(
    browser: Browser, server: Server, key: str | None, setup: Callable[[Page], Any] | None = None
) -> Playground:
    """A new browser context (its own localStorage) on GET /, with `key` pasted in; `setup`
    sees the page before it loads."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    playground = Playground(page)
    page.on("request", lambda request: playground.requests.append(request))
    page.on("pageerror", lambda error: playground.page_errors.append(str(error)))
    if setup is not None:
        setup(page)
    page.goto(server.base_url + "/")
    if key is not None:
        page.fill("#key", key)
    return playground


def ready(playground: Playground) -> None:
    """The engines and the balance are in."""
    expect(playground.page.locator("#engine option").first).to_be_attached()
    expect(playground.page.locator("#balance")).not_to_have_text("-")


@pytest.fixture
def playground(browser: Browser, server: Server, key: str) -> Iterator[Playground]:
    playground = open_playground(browser, server, key)
    ready(playground)
    yield playground
    playground.page.context.close()
    assert not playground.page_errors


@pytest.fixture(scope="module")
def shared(browser: Browser, server: Server, key: str) -> Iterator[Playground]:
    """One page for the tests that only look (and may reload it): no generation, no state
    left that another test would see."""
    playground = open_playground(browser, server, key)
    ready(playground)
    yield playground
    playground.page.context.close()
    assert not playground.page_errors


def upload(page: Page, picture: Any) -> None:
    """Choose `picture` (a PIL image) as the init image, as a PNG file."""
    png = FilePayload(name="init.png", mimeType="image/png", buffer=encode(picture))
    page.set_input_files("#init-file", files=[png])


def result_png(server: Server, key: str, generation_id: str, index: int = 0) -> bytes:
    """The image the server keeps for the generation (GET /v1/generation/{id})."""
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        response = client.get(
            f"/v1/generation/{generation_id}", headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["artifacts"][index]["base64"])


# -- the server side: files, headers, nothing in the OpenAPI document ------------------------


def test_the_page_and_its_files_are_served_with_security_headers(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        scripts = re.findall(r'src="(/playground/[^"]+)"', page.text)
        styles = re.findall(r'href="(/playground/[^"]+)"', page.text)
        assert scripts == ["/playground/playground.js"] and styles
        modules = ("api.js", "engines.js", "stage.js", "loras.js")
        for path in ("/", *scripts, *styles, *(f"/playground/{name}" for name in modules)):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert "script-src 'self'" in answer.headers["content-security-policy"]
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert client.get(scripts[0]).headers["content-type"].startswith("text/javascript")
        assert client.get("/playground/%2e%2e%2fpyproject.toml").status_code == 404
        assert client.get("/playground/secrets.txt").json()["name"] == "not_found"
        paths = client.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p == "/" or p.startswith("/playground")]


def test_the_engine_table_describes_exactly_the_enabled_engines(server: Server, key: str) -> None:
    """GET /playground/engines.json (no key): the engines of GET /v1/engines/list, in its
    order, each with the catalogue's tasks, default size and allowed sizes."""
    with httpx.Client(base_url=server.base_url) as client:
        answer = client.get("/playground/engines.json")
        listed = client.get("/v1/engines/list", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200 and listed.status_code == 200, listed.text
    assert answer.headers["content-type"] == "application/json"
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-cache"
    table = answer.json()["engines"]
    assert [e["id"] for e in table] == [e["id"] for e in listed.json()]
    for entry in table:
        spec = CATALOGUE[entry["id"]]
        assert sorted(entry["tasks"]) == sorted(task.value for task in spec.tasks)
        assert [tuple(size) for size in entry["sizes"]] == spec.allowed_sizes()
        default = [spec.default_width, spec.default_height] if entry["sizes"] else None
        assert entry["default_size"] == default
        assert entry["takes_prompts"] == spec.takes_prompts
    by_id = {e["id"]: e for e in table}
    assert by_id[ESRGAN]["sizes"] == [] and not by_id[ESRGAN]["takes_prompts"]
    assert by_id[LATENT_UPSCALER]["takes_prompts"]
    assert by_id[SD21]["default_size"] == [512, 512]


# -- the page in the browser -----------------------------------------------------------------


# Each engine's menus as the page fills them: for each engine, the width and height chosen
# when it is picked, then every (width, height) pair offered, width by width.
READ_SIZE_MENUS = """(engineIds) => {
    const $ = (id) => document.getElementById(id);
    const choose = (select, value) => {
        select.value = String(value);
        select.dispatchEvent(new Event("change"));
    };
    const offered = (select) => [...select.options].map((option) => Number(option.value));
    return Object.fromEntries(engineIds.map((engineId) => {
        choose($("engine"), engineId);
        const chosen = [Number($("width").value), Number($("height").value)];
        const sizes = offered($("width")).flatMap((width) => {
            choose($("width"), width);
            return offered($("height")).map((height) => [width, height]);
        });
        return [engineId, { chosen, sizes }];
    }));
}"""


def test_the_size_menus_offer_the_sizes_the_server_accepts(shared: Playground) -> None:
    """The width and height menus offer, for each engine, exactly EngineSpec.allowed_sizes
    (the page keeps no rules of its own), starting at the engine's default size."""
    page = shared.page
    engine_ids = page.locator("#engine option").evaluate_all("options => options.map(o => o.value)")
    menus = page.evaluate(READ_SIZE_MENUS, engine_ids)
    assert set(menus) >= {SHAPES, SDXL, SD21}
    for engine_id, menu in menus.items():
        spec = CATALOGUE[engine_id]
        assert [tuple(size) for size in menu["sizes"]] == spec.allowed_sizes(), engine_id
        assert menu["chosen"] == [spec.default_width, spec.default_height], engine_id
    assert [tuple(size) for size in menus[SDXL]["sizes"]] == sorted(SDXL_V1_SIZES)
    shapes_sides = range(128, 513, 64)
    assert menus[SHAPES]["sizes"] == [[w, h] for w in shapes_sides for h in shapes_sides]
    # Stable Diffusion 2.1 counts pixels: 256x1024 is offered, 448x512 (too few) is not.
    sd21 = CATALOGUE[SD21]
    assert [256, 1024] in menus[SD21]["sizes"] and [448, 512] not in menus[SD21]["sizes"]
    for width, height in menus[SD21]["sizes"]:
        sd21.check_size(width, height)  # the server's own check: raises if refused


def test_an_engine_missing_from_the_table_is_shown_disabled(
    browser: Browser, server: Server, key: str
) -> None:
    """An engine /v1/engines/list gives but engines.json lacks (which a server never
    answers): the page names it and offers it disabled rather than guess its rules."""

    def without_shapes(route: Route) -> None:
        answer = route.fetch()
        table = answer.json()
        table["engines"] = [e for e in table["engines"] if e["id"] != SHAPES]
        route.fulfill(response=answer, json=table)

    playground = open_playground(
        browser,
        server,
        key,
        setup=lambda page: page.route("**/playground/engines.json", without_shapes),
    )
    page = playground.page
    expect(page.locator("#error")).to_have_text(
        re.compile(rf"^engine_not_described: {SHAPES}: not in the server's engine table")
    )
    shapes = page.locator(f"#engine option[value='{SHAPES}']")
    expect(shapes).to_be_disabled()
    expect(shapes).to_have_text(re.compile("not described by the server$"))
    expect(page.locator("#engine")).not_to_have_value(SHAPES)
    assert page.locator("#engine").input_value()  # another engine, with its sizes
    expect(page.locator("#width option").first).to_be_attached()
    expect(page.locator("#generate")).to_be_enabled()
    page.context.close()
    assert not playground.page_errors


def test_a_bad_key_shows_the_401_message(browser: Browser, server: Server) -> None:
    playground = open_playground(browser, server, "sk-" + "x" * 48)
    page = playground.page
    expect(page.locator("#error")).to_have_text("unauthorized: invalid API key")
    expect(page.locator("#engine option")).to_have_count(0)
    expect(page.locator("#generate")).to_be_disabled()
    page.context.close()


def test_the_key_is_kept_in_the_browser_and_sent_only_as_bearer(
    shared: Playground, key: str
) -> None:
    playground = shared
    page = playground.page
    page.reload()
    expect(page.locator("#key")).to_have_value(key)  # from localStorage
    ready(playground)
    api_calls = [r for r in playground.requests if "/v1/" in r.url]
    assert api_calls
    for request in api_calls:
        assert request.headers["authorization"] == f"Bearer {key}"
    assert not [r for r in playground.requests if key in r.url]
    engines = page.locator("#engine option").evaluate_all("options => options.map(o => o.value)")
    assert SHAPES in engines and ESRGAN not in engines  # text-to-image engines only


# -- generations -----------------------------------------------------------------------------

# Records every value the progress bar takes (each change's old value, then the last one).
RECORD_PROGRESS = """(bar) => {
    window.progressValues = [];
    new MutationObserver((records) => {
        for (const record of records) {
            if (record.attributeName === "value") {
                window.progressValues.push(Number(record.oldValue));
            }
        }
        window.progressValues.push(bar.value);
    }).observe(bar, { attributes: true, attributeOldValue: true });
}"""


@dataclass
class Run:
    """A text-to-image generation made in the page, and what was seen of it."""

    playground: Playground
    body: Any  # the JSON the page posted
    generation_id: str
    progress: list[float]
    total: float


@pytest.fixture(scope="module")
def shapes_run(browser: Browser, server: Server, key: str) -> Iterator[Run]:
    """Two 128x128 images from the shapes engine, 10 steps, with a negative prompt, a style
    preset and a sampler chosen in the form."""
    playground = open_playground(browser, server, key)
    ready(playground)
    page = playground.page
    expect(page.locator("#engine")).to_have_value(SHAPES)
    expect(page.locator("#width")).to_have_value("128")
    page.fill(PROMPT, "a red circle")
    page.fill("#prompts .prompt:nth-child(2) .text", "blurry")
    page.select_option("#style", "line-art")
    page.select_option("#sampler", "K_EULER")
    for field_id, value in (("steps", "10"), ("seed", "42"), ("samples", "2")):
        page.fill(f"#{field_id}", value)
    page.locator("#progress").evaluate(RECORD_PROGRESS)
    with page.expect_request(lambda r: r.method == "POST") as posted:
        page.click("#generate")
    figures = page.locator("#gallery figure")
    expect(figures).to_have_count(2)
    expect(page.locator("#progress-text")).to_have_text("succeeded")
    run = Run(
        playground,
        posted.value.post_data_json,
        figures.first.get_attribute("data-generation") or "",
        page.evaluate("() => window.progressValues"),
        float(page.locator("#progress").get_attribute("max") or 0),
    )
    yield run
    page.context.close()
    assert not playground.page_errors


def test_text_to_image_sends_the_form_and_shows_the_images(shapes_run: Run) -> None:
    assert shapes_run.body == {
        "text_prompts": [{"text": "a red circle", "weight": 1}, {"text": "blurry", "weight": -1}],
        "width": 128,
        "height": 128,
        "samples": 2,
        "sampler": "K_EULER",
        "style_preset": "line-art",
        "steps": 10,
        "cfg_scale": 7,
        "seed": 42,
    }
    page = shapes_run.playground.page
    figures = page.locator("#gallery figure")
    assert figures.locator(".seed").all_inner_texts() == ["42", "43"]
    assert figures.locator(".finish").all_inner_texts() == ["SUCCESS", "SUCCESS"]
    sizes = figures.locator("img").evaluate_all(
        "images => images.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert sizes == [[True, 128, 128], [True, 128, 128]]


def test_the_progress_bar_moves_through_the_steps(shapes_run: Run) -> None:
    values = shapes_run.progress
    assert shapes_run.total == 10
    assert values == sorted(values) and values[-1] == 10, values
    assert [v for v in values if 0 < v < 10], values  # at least one step in between


def test_a_result_downloads_as_the_servers_png(shapes_run: Run, server: Server, key: str) -> None:
    page = shapes_run.playground.page
    with page.expect_download() as started:
        page.locator("#gallery figure").first.locator("a.download").click()
    download = started.value
    assert download.suggested_filename == f"{SHAPES}-42.png"
    data = Path(download.path()).read_bytes()
    assert png_image(data).size == (128, 128)
    assert data == result_png(server, key, shapes_run.generation_id)


def test_cancel_stops_a_long_generation_and_refunds_it(playground: Playground) -> None:
    page = playground.page
    page.fill(PROMPT, "two blue squares")
    page.select_option("#width", "256")
    page.select_option("#height", "256")
    for field_id, value in (("steps", "50"), ("samples", "2")):
        page.fill(f"#{field_id}", value)
    balance = page.locator("#balance")
    before = balance.inner_text()
    page.click("#generate")
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^running: [1-9]\d* of 50$"))
    expect(balance).not_to_have_text(before)  # its cost is held while it runs
    assert playground.balance() < float(before.replace(",", ""))
    page.click("#cancel")
    expect(page.locator("#error")).to_have_text(
        re.compile(r"^generation_cancelled: generation \S+ was cancelled .*refunded$")
    )
    expect(page.locator("#progress-text")).to_have_text("cancelled")
    expect(balance).to_have_text(before)
    expect(page.locator("#gallery figure")).to_have_count(0)


def test_image_to_image_sends_the_init_image_fitted_to_the_size(
    playground: Playground, server: Server, key: str
) -> None:
    page = playground.page
    page.select_option("#task", "image-to-image")
    picture = sample_picture(192, 128)
    upload(page, picture)
    expect(page.locator("#init-canvas")).to_have_attribute("width", "128")
    page.fill(PROMPT, "a green triangle")
    page.fill("#strength", "1")  # nothing to denoise: the init image comes back as sent
    page.click("#generate")
    figure = page.locator("#gallery figure")
    expect(figure).to_have_count(1)
    out = png_image(result_png(server, key, figure.get_attribute("data-generation") or ""))
    assert out.size == (128, 128)
    # Scaled to cover 128x128 (scale 1 here) and centre-cropped.
    assert (pixels(out) == pixels(picture.crop((32, 0, 160, 128)))).all()


def test_a_mask_painted_on_the_canvas_inpaints_only_there(
    playground: Playground, server: Server, key: str
) -> None:
    page = playground.page
    page.select_option("#task", "image-to-image/masking")
    picture = sample_picture(128, 128)
    upload(page, picture)
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_have_attribute("width", "128")

    def drag(x0: float, x1: float, y: float) -> None:
        """A stroke along row `y` of the image, from x0 to x1 (image pixels)."""
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()  # where it is in the viewport now
        assert box is not None
        scale = box["width"] / 128
        page.mouse.move(box["x"] + x0 * scale, box["y"] + y * scale)
        page.mouse.down()
        page.mouse.move(box["x"] + x1 * scale, box["y"] + y * scale, steps=8)
        page.mouse.up()

    assert page.locator("#brush").input_value() == "16"
    drag(8, 120, 64)
    page.click("#clear-mask")
    page.fill(PROMPT, "a yellow star")
    page.fill("#steps", "10")
    page.click("#generate")
    expect(page.locator("#error")).to_have_text("empty_mask: paint the area to regenerate")

    drag(8, 120, 64)  # painted: rows 56..72, the whole width
    page.check("#erase")
    drag(8, 56, 64)  # erased again up to x = 64
    page.uncheck("#erase")
    page.click("#generate")
    figure = page.locator("#gallery figure")
    expect(figure).to_have_count(1)
    out = pixels(png_image(result_png(server, key, figure.get_attribute("data-generation") or "")))
    init = pixels(picture)
    assert (out[:48] == init[:48]).all() and (out[82:] == init[82:]).all()  # unpainted
    assert (out[58:71, 12:50] == init[58:71, 12:50]).all()  # painted, then erased
    regenerated = (out[58:71, 72:118] != init[58:71, 72:118]).any(axis=-1)
    assert regenerated.mean() > 0.5, regenerated.mean()


def test_upscale_and_a_bad_size_shows_the_400_message(
    playground: Playground, server: Server, key: str
) -> None:
    page = playground.page
    page.select_option("#task", "image-to-image/upscale")
    page.select_option("#engine", ESRGAN)
    expect(page.locator("#prompts")).to_be_hidden()  # ESRGAN takes no prompt
    upload(page, sample_picture(128, 128))
    before = playground.balance()
    page.fill("#upscale-width", "4096")
    page.click("#generate")
    expect(page.locator("#error")).to_have_text(
        "invalid_pixel_count: The requested image would exceed the maximum pixel count of "
        "4,194,304 (4096x4096 = 16,777,216)"
    )
    expect(page.locator("#generate")).to_be_enabled()
    assert playground.balance() == before  # a bad request is never charged

    page.fill("#upscale-width", "")  # twice the input
    page.click("#generate")
    figure = page.locator("#gallery figure")
    expect(figure).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()
    out = png_image(result_png(server, key, figure.get_attribute("data-generation") or ""))
    assert out.size == (256, 256)


# -- LoRA adapters ---------------------------------------------------------------------------


def lora_menus(page: Page) -> list[dict[str, Any]]:
    """Each adapter row: its adapter, its menu's options and which of them are disabled."""
    return page.locator("#loras .lora .name").evaluate_all(
        """selects => selects.map(select => ({
            value: select.value,
            options: [...select.options].map(o => o.value),
            disabled: [...select.options].filter(o => o.disabled).map(o => o.value),
        }))"""
    )


def small_sd16_request(page: Page, prompt: str) -> None:
    """SD 1.6 at its smallest size, 10 steps, seed 42 (a fast generation)."""
    page.select_option("#engine", SD16)
    page.select_option("#width", "320")
    page.select_option("#height", "320")
    page.fill(PROMPT, prompt)
    page.fill("#steps", "10")
    page.fill("#seed", "42")


def test_the_lora_picker_offers_the_engines_adapters_and_sends_them(
    playground: Playground, server: Server, key: str
) -> None:
    """The adapters of GET /v1/engines/list, each at most once, with the OpenAPI document's
    weight bounds; the rows are dropped for an engine that does not offer their adapter and
    hidden where there are none; text-to-image sends exactly the `loras` chosen, which draw
    what the same request made directly draws."""
    page = playground.page
    picker = page.locator("fieldset:has(#loras)")
    add = page.locator("#add-lora")
    with httpx.Client(base_url=server.base_url) as client:
        listed = client.get("/v1/engines/list", headers={"Authorization": f"Bearer {key}"})
    offered = {engine["id"]: engine["loras"] for engine in listed.json()}
    assert offered[SD16] == [DETAIL, STYLE] and offered[SD21] == []
    page.select_option("#engine", SD21)
    expect(picker).to_be_hidden()  # it offers none
    small_sd16_request(page, "a lighthouse")
    expect(picker).to_be_visible()
    expect(page.locator("#loras .lora")).to_have_count(0)
    add.click()
    add.click()  # the second adapter: all are now named
    expect(add).to_be_disabled()
    assert lora_menus(page) == [
        {"value": DETAIL, "options": [DETAIL, STYLE], "disabled": [STYLE]},
        {"value": STYLE, "options": [DETAIL, STYLE], "disabled": [DETAIL]},
    ]
    weight = page.locator("#loras .lora .weight").first
    expect(weight).to_have_value("1")
    for attribute, value in (("min", "-4"), ("max", "4"), ("step", "0.05")):
        expect(weight).to_have_attribute(attribute, value)  # bounds: the OpenAPI document's
    page.locator("#loras .lora .remove").first.click()  # DETAIL's row
    expect(add).to_be_enabled()
    page.locator("#loras .lora .weight").fill("1.5")

    with page.expect_request(lambda r: r.method == "POST") as posted:
        page.click("#generate")
    figure = page.locator("#gallery figure")
    expect(figure).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()
    body = posted.value.post_data_json
    assert body is not None and body["loras"] == [{"name": STYLE, "weight": 1.5}]
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        direct = client.post(
            f"/v1/generation/{SD16}/text-to-image",
            json=body,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
        )
    assert direct.status_code == 200, direct.text
    drawn = png_image(result_png(server, key, figure.get_attribute("data-generation") or ""))
    same = png_image(base64.b64decode(direct.json()["artifacts"][0]["base64"]))
    assert (pixels(drawn) == pixels(same)).all()

    # SDXL offers only its own adapter: the row is dropped; its sibling keeps the row it offers.
    page.select_option("#engine", SDXL)
    expect(page.locator("#loras .lora")).to_have_count(0)
    add.click()
    expect(add).to_be_disabled()
    assert lora_menus(page) == [{"value": XL_STYLE, "options": [XL_STYLE], "disabled": []}]
    page.select_option("#engine", SDXL_BETA)
    assert lora_menus(page) == [{"value": XL_STYLE, "options": [XL_STYLE], "disabled": []}]
    page.select_option("#engine", SD21)
    expect(picker).to_be_hidden()
    expect(page.locator("#loras .lora")).to_have_count(0)
    page.select_option("#engine", SD16)  # the dropped rows stay dropped
    expect(picker).to_be_visible()
    expect(page.locator("#loras .lora")).to_have_count(0)
    page.select_option("#task", "image-to-image/upscale")
    expect(picker).to_be_hidden()


# Records the parts of each multipart body the page posts, as [name, value] ("file <name>" for
# a file): Chromium gives Playwright no body that holds a file.
RECORD_FORMS = """() => {
    window.postedForms = [];
    const fetch = window.fetch;
    window.fetch = (resource, init = {}) => {
        if (init.body instanceof FormData) {
            window.postedForms.push([...init.body.entries()].map(([name, value]) =>
                [name, typeof value === "string" ? value : `file ${value.name}`]));
        }
        return fetch(resource, init);
    };
}"""


def test_image_to_image_sends_the_lora_adapters_as_multipart_parts(
    playground: Playground,
) -> None:
    page = playground.page
    page.evaluate(RECORD_FORMS)
    page.select_option("#task", "image-to-image")
    small_sd16_request(page, "a lighthouse")
    upload(page, sample_picture(320, 320))
    expect(page.locator("#init-canvas")).to_have_attribute("width", "320")
    page.fill("#strength", "0.5")
    page.click("#add-lora")
    page.locator("#loras .lora .name").select_option(STYLE)  # instead of the first offered
    page.click("#add-lora")  # the one left
    expect(page.locator("#loras .lora .name").nth(1)).to_have_value(DETAIL)
    page.locator("#loras .lora .weight").nth(1).fill("-0.25")
    page.click("#generate")
    expect(page.locator("#gallery figure")).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("() => window.postedForms") == [
        [
            ["text_prompts[0][text]", "a lighthouse"],
            ["text_prompts[0][weight]", "1"],
            ["loras[0][name]", STYLE],
            ["loras[0][weight]", "1"],
            ["loras[1][name]", DETAIL],
            ["loras[1][weight]", "-0.25"],
            ["samples", "1"],
            ["steps", "10"],
            ["cfg_scale", "7"],
            ["seed", "42"],
            ["init_image_mode", "IMAGE_STRENGTH"],
            ["image_strength", "0.5"],
            ["init_image", "file init.png"],
        ]
    ]
