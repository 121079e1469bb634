"""The bad input catalogue (issue 6, item 3): each case gets its exact status and error name
in the spec's envelope, at once, and never a 500 or a hang.

Only the gaps are here; these files hold the rest of the catalogue: test_errors.py (JSON body
errors, NaN/Infinity, malformed JSON, content types, text-to-image size rules, unknown
engine), test_image_to_image.py (uploads: GIF, text, empty, truncated, bomb, over 10 MiB;
request shape), test_masking.py (mask errors), test_upscale.py (upscale errors),
test_accounts_engines.py (missing/bad key, bare key) and test_ratelimit.py.

Every request fails before inference. Where a value must be shown to be *accepted*, the
request carries one more fault that is checked later (a 64x64 init image, a 100 px width, a
huge upscale target), so the answer names that later rule instead of running a model.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, assert_no_server_errors, log_records, start_deployment
from tests.helpers import encode, sample_picture, t2i_body
from tests.test_accounts_engines import assert_envelope

GENERATION = "/v1/generation"
T2I = f"{GENERATION}/stable-diffusion-v1-6/text-to-image"
I2I = f"{GENERATION}/stable-diffusion-v1-6/image-to-image"
MASK = f"{GENERATION}/stable-diffusion-v1-6/image-to-image/masking"
ESRGAN = f"{GENERATION}/esrgan-v1-x2plus/image-to-image/upscale"
LATENT = f"{GENERATION}/stable-diffusion-x4-latent-upscaler/image-to-image/upscale"
READ_PATHS = ["/v1/engines/list", "/v1/user/account", "/v1/user/balance"]
JSON_TYPE = {"Content-Type": "application/json"}
MIB = 1024 * 1024
# A hang guard for raw-socket reads and the log wait (the cases take well under 1 s); the httpx
# clients' own timeouts guard the rest. No case asserts how fast it is answered.
QUICK_S = 10.0


@pytest.fixture(scope="module")
def server(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Server:
    """A server of this module's own, without rate limits: the catalogue sends a few hundred
    requests in seconds, more than the 150 per 10 s the shared server's key may make (and its
    log holds only this module's requests). Overrides conftest's `server` (and `client`).
    """
    directory = tmp_path_factory.mktemp("bad_input")
    deployment = start_deployment(
        tiny_dir, directory, "sqlite", request, LOCALSTABILITY_RATE_LIMIT_REQUESTS="0"
    )
    return deployment.server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    """One authenticated client for the module (a new one per case would cost more than most
    cases take)."""
    with server.client() as http:
        yield http


@pytest.fixture(scope="module")
def anonymous(server: Server) -> Iterator[httpx.Client]:
    """A client that sends no Authorization header of its own."""
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        yield http


# --- images ------------------------------------------------------------------------------


def image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    return encode(Image.new(mode, (width, height)), fmt)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), (80 * i, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose header says width x height, with (almost) no pixel data behind it."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + png_chunk(b"IEND", b"")
    )


def png_with_broken_header_crc() -> bytes:
    data = bytearray(image_bytes(64, 64))
    data[29] ^= 0xFF  # the last byte of IHDR's CRC
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(8, 8, fmt="JPEG"))
    frame = data.find(b"\xff\xc0")  # SOF0: length (2), precision (1), height (2), width (2)
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# 64x64 fails SD 1.6's size rule (sides >= 128), which is checked after the image is decoded:
# an image that gets invalid_height_or_width was read without complaint.
SMALL = image_bytes(64, 64)
SMALL_RGBA = image_bytes(64, 64, "RGBA")
PICTURE_JPEG = encode(sample_picture(320, 320), "JPEG")
PICTURE_WEBP = encode(sample_picture(320, 320), "WEBP")
OVERSIZED = SMALL + b"\0" * (10 * MIB)  # over max_upload_bytes (10 MiB)


# --- requests ----------------------------------------------------------------------------

Files = list[tuple[str, tuple[str | None, bytes, str]]]


def form(
    client: httpx.Client,
    path: str,
    fields: dict[str, Any],
    files: Files,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(path, data=fields, files=files, headers=headers)


Fields = dict[str, str] | None


def img2img(
    client: httpx.Client, image: bytes = SMALL, path: str = I2I, fields: Fields = None
) -> httpx.Response:
    data = {"text_prompts[0][text]": "a lighthouse", "steps": "10", **(fields or {})}
    return form(client, path, data, [("init_image", ("init.png", image, "image/png"))])


def masking(
    client: httpx.Client, image: bytes = SMALL_RGBA, path: str = MASK, fields: Fields = None
) -> httpx.Response:
    data = {"text_prompts[0][text]": "a wall", "mask_source": "INIT_IMAGE_ALPHA", **(fields or {})}
    return form(client, path, data, [("init_image", ("init.png", image, "image/png"))])


def upscale(
    client: httpx.Client, image: bytes = SMALL, path: str = ESRGAN, fields: Fields = None
) -> httpx.Response:
    return form(client, path, fields or {}, [("image", ("image.png", image, "image/png"))])


SENDERS = {"image-to-image": img2img, "masking": masking}


def raw_exchange(server: Server, request: bytes, half_close: bool = False) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=QUICK_S) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def first_response(raw: bytes) -> httpx.Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int({k.lower(): v for k, v in headers.items()}["content-length"])
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=rest[:length])


# --- huge bodies ---------------------------------------------------------------------------


def chunks(head: bytes, total: int, tail: bytes) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): the server can't refuse it up front."""
    yield head
    for _ in range(total // MIB):
        yield b"a" * MIB
    yield tail


PROMPT_HEAD = b'{"text_prompts":[{"text":"'
PROMPT_TAIL = b'"}]}'


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: PROMPT_HEAD + b"a" * (32 * MIB) + PROMPT_TAIL, id="32 MiB declared"),
        pytest.param(lambda: chunks(PROMPT_HEAD, 32 * MIB, PROMPT_TAIL), id="32 MiB chunked"),
        pytest.param(lambda: b" " * (2 * MIB) + b"{}", id="2 MiB of whitespace"),
    ],
)
def test_huge_json_body(client: httpx.Client, content: Any) -> None:
    response = client.post(T2I, content=content(), headers=JSON_TYPE)
    body = assert_envelope(response, 400, "bad_request")
    assert "1,048,576 bytes" in body["message"]


def test_json_body_just_under_the_limit_is_read(client: httpx.Client) -> None:
    padding = b"a" * (MIB - 100)
    raw = b'{"text_prompts":[{"text":"a"}],"width":100,"padding":"' + padding + b'"}'
    assert len(raw) < MIB
    response = client.post(T2I, content=raw, headers=JSON_TYPE)
    assert_envelope(response, 400, "invalid_height_or_width")


def multipart_chunks(total: int) -> Iterator[bytes]:
    yield (
        b'--b\r\nContent-Disposition: form-data; name="text_prompts[0][text]"\r\n\r\na\r\n'
        b'--b\r\nContent-Disposition: form-data; name="init_image"; filename="i.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + SMALL
    )
    for _ in range(total // MIB):
        yield b"\0" * MIB
    yield b"\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("request_kind", "name"),
    [
        ("32 MiB file declared", "invalid_file_size"),
        ("32 MiB file chunked", "invalid_file_size"),
        ("32 MiB text field declared", "invalid_file_size"),
        ("2 MiB text field", "bad_request"),
        ("201 text fields", "bad_request"),
        ("5 file parts", "bad_request"),
    ],
)
def test_huge_multipart_body(client: httpx.Client, request_kind: str, name: str) -> None:
    prompt = {"text_prompts[0][text]": "a"}
    init: Files = [("init_image", ("i.png", SMALL, "image/png"))]
    if request_kind == "32 MiB file declared":
        big: Files = [("init_image", ("i.png", SMALL + b"\0" * (32 * MIB), "image/png"))]
        response = form(client, I2I, prompt, big)
    elif request_kind == "32 MiB file chunked":
        response = client.post(
            I2I,
            content=multipart_chunks(32 * MIB),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    elif request_kind == "32 MiB text field declared":
        response = form(client, I2I, {"text_prompts[0][text]": "a" * (32 * MIB)}, init)
    elif request_kind == "2 MiB text field":
        response = form(client, I2I, {"text_prompts[0][text]": "a" * (2 * MIB)}, init)
    elif request_kind == "201 text fields":
        fields = {f"extras[k{i}]": "v" for i in range(201)}
        response = form(client, I2I, {**prompt, **fields}, init)
    else:
        response = form(client, I2I, prompt, init * 5)
    assert_envelope(response, 400, name)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "name"),
    [
        (
            T2I,
            lambda total: chunks(PROMPT_HEAD, total, PROMPT_TAIL),
            "application/json",
            "bad_request",
        ),
        (I2I, multipart_chunks, "multipart/form-data; boundary=b", "invalid_file_size"),
    ],
    ids=["json", "multipart"],
)
def test_a_chunked_body_is_not_read_past_the_limit(
    client: httpx.Client, path: str, body: Any, content_type: str, name: str
) -> None:
    """A chunked body (no Content-Length to refuse up front) of 1 GiB: the server answers once
    the limit (1 MiB JSON, 11 MiB for image-to-image) has arrived and closes the connection, so
    the client sends little more than that, and the server can't have read, or spooled to
    disk, more than the client sent."""
    sent = 0

    def counted() -> Iterator[bytes]:
        nonlocal sent
        for part in body(1024 * MIB):
            sent += len(part)
            yield part

    response = client.post(path, content=counted(), headers={"Content-Type": content_type})
    assert_envelope(response, 400, name)
    # What the limit lets in, plus what the sockets' buffers held when the server stopped.
    assert sent < 64 * MIB


# --- JSON that Python can't read, and other odd JSON ---------------------------------------

ODD_JSON: list[tuple[str, bytes, str]] = [
    (
        "integer of 5000 digits",
        b'{"text_prompts":[{"text":"a"}],"steps":' + b"9" * 5000 + b"}",
        "bad_request",
    ),
    (
        "float of 5000 digits",
        b'{"text_prompts":[{"text":"a"}],"cfg_scale":' + b"9" * 5000 + b".5}",
        "bad_request",
    ),
    (
        "arrays nested 100000 deep",
        b'{"text_prompts":[{"text":"a"}],"extras":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        "bad_request",
    ),
    (
        "float overflowing to infinity",
        b'{"text_prompts":[{"text":"a","weight":1e999}]}',
        "bad_request",
    ),
    ("lone surrogate in the prompt", b'{"text_prompts":[{"text":"\\ud800"}]}', "bad_request"),
    ("latin-1 bytes", b'{"text_prompts":[{"text":"caf\xe9"}]}', "bad_request"),
    ("trailing garbage", b'{"text_prompts":[{"text":"a"}]} x', "bad_request"),
    ("two objects", b'{"text_prompts":[{"text":"a"}]}{}', "bad_request"),
    ("null", b"null", "bad_request"),
    ("a number", b"42", "bad_request"),
    ("whitespace only", b" \r\n\t ", "bad_request"),
    ("single quotes", b"{'text_prompts':[{'text':'a'}]}", "bad_request"),
    ("NUL byte outside a string", b'{"text_prompts":[{"text":"a"}]\x00}', "bad_request"),
    # Read, then refused by a later rule: proof that these parse.
    (
        "duplicate key: the last one counts",
        b'{"text_prompts":[{"text":"a"}],"width":512,"width":100}',
        "invalid_height_or_width",
    ),
    (
        "UTF-8 byte order mark",
        b'\xef\xbb\xbf{"text_prompts":[{"text":"a"}],"width":100}',
        "invalid_height_or_width",
    ),
    (
        "NUL character in the prompt",
        b'{"text_prompts":[{"text":"a\\u0000b"}],"width":100}',
        "invalid_height_or_width",
    ),
]


@pytest.mark.parametrize(("case", "raw", "name"), ODD_JSON, ids=[c[0] for c in ODD_JSON])
def test_odd_json(client: httpx.Client, case: str, raw: bytes, name: str) -> None:
    assert_envelope(client.post(T2I, content=raw, headers=JSON_TYPE), 400, name)


ODD_CONTENT_TYPES: list[tuple[str, str]] = [
    ("application/jsonx", "bad_request"),
    ("application/json-patch+json", "bad_request"),
    ("application/x-json", "bad_request"),
    ("text/json", "bad_request"),
    ("", "bad_request"),
    ("; charset=utf-8", "bad_request"),
    ("APPLICATION/JSON", "invalid_height_or_width"),  # media types are case-insensitive
    ("application/json;charset=UTF-8;foo=bar", "invalid_height_or_width"),
]


@pytest.mark.parametrize(("content_type", "name"), ODD_CONTENT_TYPES)
def test_odd_json_content_types(client: httpx.Client, content_type: str, name: str) -> None:
    raw = json.dumps(t2i_body(width=100)).encode()
    response = client.post(T2I, content=raw, headers={"Content-Type": content_type})
    assert_envelope(response, 400, name)


# --- numbers out of range, on every endpoint -----------------------------------------------

T2I_NUMBERS: list[tuple[str, dict[str, Any], str]] = [
    ("width negative", {"width": -512}, "invalid_height_or_width"),
    ("width zero", {"width": 0}, "invalid_height_or_width"),
    ("height negative", {"height": -64}, "invalid_height_or_width"),
    ("height zero", {"height": 0}, "invalid_height_or_width"),
    ("width 10**30", {"width": 10**30}, "invalid_height_or_width"),
    ("height 2**63", {"height": 2**63}, "invalid_height_or_width"),
    ("width fractional", {"width": 512.5}, "bad_request"),
    ("width null", {"width": None}, "bad_request"),
    ("samples negative", {"samples": -1}, "bad_request"),
    ("samples 10**20", {"samples": 10**20}, "bad_request"),
    ("steps negative", {"steps": -10}, "bad_request"),
    ("steps zero", {"steps": 0}, "bad_request"),
    ("steps 10**20", {"steps": 10**20}, "bad_request"),
    ("steps fractional", {"steps": 10.5}, "bad_request"),
    ("cfg_scale 1e308", {"cfg_scale": 1e308}, "bad_request"),
    ("cfg_scale -1e308", {"cfg_scale": -1e308}, "bad_request"),
    ("seed 10**30", {"seed": 10**30}, "bad_request"),
]


@pytest.mark.parametrize(("case", "fields", "name"), T2I_NUMBERS, ids=[c[0] for c in T2I_NUMBERS])
def test_text_to_image_numbers(
    client: httpx.Client, case: str, fields: dict[str, Any], name: str
) -> None:
    assert_envelope(client.post(T2I, json=t2i_body(**fields)), 400, name)


HUGE_SIDE = 10**30  # a multiple of 64: only the engine's own rule refuses it
HUGE_SIZES = [
    ("stable-diffusion-v1-6", "invalid_height_or_width"),
    ("stable-diffusion-512-v2-1", "invalid_pixel_count"),
    ("stable-diffusion-xl-1024-v1-0", "invalid_sdxl_v1_dimensions"),
    ("stable-diffusion-xl-beta-v2-2-2", "invalid_sdxl_v222_dimensions"),
]


@pytest.mark.parametrize(("engine", "name"), HUGE_SIZES)
def test_huge_size_on_each_engine(client: httpx.Client, engine: str, name: str) -> None:
    path = f"{GENERATION}/{engine}/text-to-image"
    response = client.post(path, json=t2i_body(width=HUGE_SIDE, height=HUGE_SIDE))
    assert_envelope(response, 400, name)


def _form_numbers() -> list[tuple[str, str, str, str]]:
    """(endpoint, field, value, name): multipart scalars out of range or unreadable."""
    common = {
        "cfg_scale": ["-1", "35.01", "1e308", "nan", "inf", "-inf", "", "seven"],
        "samples": ["-1", "11", "1e2", "99999999999999999999", "1.5"],
        "steps": ["-10", "0", "9", "51", "99999999999999999999", "1.5"],
        "seed": ["-1", "4294967296", "1e3", "0x10"],
    }
    cases = []
    for endpoint in ("image-to-image", "masking"):
        for field, values in common.items():
            cases += [(endpoint, field, value, "bad_request") for value in values]
    strength = {
        "image_strength": ["-0.01", "1.01", "nan", "inf", "-inf", ""],
        "step_schedule_start": ["-0.1", "1.1", "nan", "inf"],
        "step_schedule_end": ["1.1", "nan", "-inf", "inf"],
    }
    for field, values in strength.items():
        cases += [("image-to-image", field, value, "bad_request") for value in values]
    for endpoint in ("upscale esrgan", "upscale latent"):
        for field in ("width", "height"):
            for value in ("0", "-512", "511", "nan", "inf", "512.5", "", "1e3"):
                cases.append((endpoint, field, value, "bad_request"))
            cases.append((endpoint, field, "99999999999999999999", "invalid_pixel_count"))
        for field, values in {
            "steps": ["9", "51", "-1"],
            "cfg_scale": ["-1", "36", "nan"],
            "seed": ["-1", "4294967296"],
        }.items():
            cases += [(endpoint, field, value, "bad_request") for value in values]
    return cases


FORM_NUMBERS = _form_numbers()


@pytest.mark.parametrize(
    ("endpoint", "field", "value", "name"),
    FORM_NUMBERS,
    ids=[f"{e} {f}={v!r}" for e, f, v, _ in FORM_NUMBERS],
)
def test_multipart_numbers(
    client: httpx.Client, endpoint: str, field: str, value: str, name: str
) -> None:
    if endpoint.startswith("upscale"):
        path = LATENT if endpoint == "upscale latent" else ESRGAN
        response = upscale(client, path=path, fields={field: value})
    else:
        response = SENDERS[endpoint](client, fields={field: value})
    body = assert_envelope(response, 400, name)
    if name == "bad_request":
        assert field in body["message"]


# --- prompts over 2,000 characters ---------------------------------------------------------

LONG_PROMPTS: list[tuple[str, str, str]] = [
    # (case, text, name): 2,000 characters is the limit, counted in characters, not bytes.
    ("2001 ASCII", "a" * 2001, "bad_request"),
    ("2001 two-byte", "é" * 2001, "bad_request"),
    ("2000 two-byte (4000 bytes)", "é" * 2000, "accepted"),
    ("2000 astral (8000 bytes)", "\U0001f600" * 2000, "accepted"),
]


@pytest.mark.parametrize(("case", "text", "name"), LONG_PROMPTS, ids=[c[0] for c in LONG_PROMPTS])
@pytest.mark.parametrize(
    "endpoint", ["text-to-image", "image-to-image", "masking", "upscale latent"]
)
def test_prompt_length(
    client: httpx.Client, endpoint: str, case: str, text: str, name: str
) -> None:
    accepted = name == "accepted"
    prompt = {"text_prompts[0][text]": text}
    if endpoint == "text-to-image":
        body = t2i_body(text_prompts=[{"text": text}], width=100)
        response = client.post(T2I, json=body)
        later = "invalid_height_or_width"
    elif endpoint == "upscale latent":
        response = upscale(client, path=LATENT, fields={"width": "99999", **prompt})
        later = "invalid_pixel_count"
    else:
        response = SENDERS[endpoint](client, fields=prompt)
        later = "invalid_height_or_width"
    body_name = later if accepted else name
    message = assert_envelope(response, 400, body_name)["message"]
    if not accepted:
        assert "at most 2000 characters" in message


def test_negative_prompt_over_2000_characters(client: httpx.Client) -> None:
    prompts = [{"text": "a"}, {"text": "b" * 2001, "weight": -1}]
    response = client.post(T2I, json=t2i_body(text_prompts=prompts))
    assert "text_prompts.1.text" in assert_envelope(response, 400, "bad_request")["message"]


# --- unknown engines, tasks and methods ----------------------------------------------------

UNKNOWN_ENGINES = [
    ("image-to-image", f"{GENERATION}/stable-diffusion-v9/image-to-image"),
    ("masking", f"{GENERATION}/stable-inpainting-512-v2-0/image-to-image/masking"),
    ("upper case", f"{GENERATION}/STABLE-DIFFUSION-V1-6/text-to-image"),
    ("trailing space", f"{GENERATION}/stable-diffusion-v1-6%20/text-to-image"),
    ("NUL byte", f"{GENERATION}/stable%00diffusion/text-to-image"),
    ("non-ASCII", f"{GENERATION}/st%C3%A4ble-diffusion/text-to-image"),
    ("5000 characters", f"{GENERATION}/{'x' * 5000}/text-to-image"),
    ("dot dot", f"{GENERATION}/../text-to-image"),
]


@pytest.mark.parametrize(
    "path", [p for _, p in UNKNOWN_ENGINES], ids=[c for c, _ in UNKNOWN_ENGINES]
)
def test_unknown_engine(client: httpx.Client, path: str) -> None:
    if path.endswith("text-to-image"):
        response = client.post(path, json=t2i_body())
    else:
        response = form(client, path, {}, [("init_image", ("i.png", SMALL, "image/png"))])
    assert_envelope(response, 404, "not_found")


WRONG_TASKS = [
    ("masking on an upscaler", f"{GENERATION}/esrgan-v1-x2plus/image-to-image/masking"),
    (
        "image-to-image on the latent upscaler",
        f"{GENERATION}/stable-diffusion-x4-latent-upscaler/image-to-image",
    ),
    ("upscale on SDXL", f"{GENERATION}/stable-diffusion-xl-1024-v1-0/image-to-image/upscale"),
]


@pytest.mark.parametrize("path", [p for _, p in WRONG_TASKS], ids=[c for c, _ in WRONG_TASKS])
def test_engine_that_cannot_do_the_task(client: httpx.Client, path: str) -> None:
    files: Files = [("init_image", ("i.png", SMALL, "image/png")), ("image", ("i.png", SMALL, ""))]
    response = form(client, path, {"text_prompts[0][text]": "a"}, files)
    assert_envelope(response, 400, "bad_request")


@pytest.mark.parametrize(
    ("method", "path", "status", "name"),
    [
        ("GET", T2I, 405, "method_not_allowed"),
        ("PUT", I2I, 405, "method_not_allowed"),
        ("PATCH", ESRGAN, 405, "method_not_allowed"),
        ("POST", f"{GENERATION}/stable-diffusion-v1-6/sketch", 404, "not_found"),
        ("POST", f"{GENERATION}/stable-diffusion-v1-6/image-to-image/outpaint", 404, "not_found"),
    ],
)
def test_wrong_method_or_task_path(
    client: httpx.Client, method: str, path: str, status: int, name: str
) -> None:
    assert_envelope(client.request(method, path), status, name)


# --- invalid init image sizes, per engine ----------------------------------------------------

INIT_SIZES: list[tuple[str, int, int, str]] = [
    ("stable-diffusion-v1-6", 256, 256, "invalid_height_or_width"),
    ("stable-diffusion-v1-6", 1600, 320, "invalid_height_or_width"),
    ("stable-diffusion-v1-6", 320, 330, "invalid_height_or_width"),
    ("stable-diffusion-v1-6", 1, 1, "invalid_height_or_width"),
    ("stable-diffusion-512-v2-1", 256, 256, "invalid_pixel_count"),
    ("stable-diffusion-512-v2-1", 1088, 1024, "invalid_pixel_count"),
    ("stable-diffusion-512-v2-1", 500, 512, "invalid_height_or_width"),
    ("stable-diffusion-xl-1024-v1-0", 1024, 576, "invalid_sdxl_v1_dimensions"),
    ("stable-diffusion-xl-1024-v1-0", 1000, 1000, "invalid_sdxl_v1_dimensions"),
    ("stable-diffusion-xl-1024-v1-0", 1, 1, "invalid_sdxl_v1_dimensions"),
    ("stable-diffusion-xl-beta-v2-2-2", 640, 640, "invalid_sdxl_v222_dimensions"),
    ("stable-diffusion-xl-beta-v2-2-2", 1024, 512, "invalid_sdxl_v222_dimensions"),
    ("stable-diffusion-xl-beta-v2-2-2", 100, 512, "invalid_height_or_width"),
]


@pytest.mark.parametrize("endpoint", ["image-to-image", "masking"])
@pytest.mark.parametrize(
    ("engine", "width", "height", "name"),
    INIT_SIZES,
    ids=[f"{e} {w}x{h}" for e, w, h, _ in INIT_SIZES],
)
def test_init_image_size_rules(
    client: httpx.Client, endpoint: str, engine: str, width: int, height: int, name: str
) -> None:
    if endpoint == "masking":
        image = image_bytes(width, height, "RGBA")
        response = masking(client, image, f"{GENERATION}/{engine}/image-to-image/masking")
    else:
        image = image_bytes(width, height)
        response = img2img(client, image, f"{GENERATION}/{engine}/image-to-image")
    message = assert_envelope(response, 400, name)["message"]
    assert f"{width}x{height}" in message


# --- invalid upscale output sizes ------------------------------------------------------------

UPSCALE_SIZES: list[tuple[str, int, int, dict[str, str], str]] = [
    ("2049 wide from a square", 64, 64, {"width": "2049"}, "invalid_pixel_count"),
    ("4097 wide from 4:1", 256, 64, {"width": "4097"}, "invalid_pixel_count"),
    ("512 wide from 1x4000", 1, 4000, {"width": "512"}, "invalid_pixel_count"),
    ("512 high from 4000x1", 4000, 1, {"height": "512"}, "invalid_pixel_count"),
    ("default 2x of 2049x1024", 2049, 1024, {}, "invalid_pixel_count"),
    ("narrower than the input", 1000, 10, {"width": "600"}, "bad_request"),
    ("lower than the input", 10, 1000, {"height": "600"}, "bad_request"),
]


@pytest.mark.parametrize("path", [ESRGAN, LATENT], ids=["esrgan", "latent"])
@pytest.mark.parametrize(
    ("case", "width", "height", "fields", "name"),
    UPSCALE_SIZES,
    ids=[c[0] for c in UPSCALE_SIZES],
)
def test_upscale_output_size_rules(
    client: httpx.Client,
    path: str,
    case: str,
    width: int,
    height: int,
    fields: dict[str, str],
    name: str,
) -> None:
    response = upscale(client, image_bytes(width, height), path, fields)
    assert_envelope(response, 400, name)


# --- image defects (upload rules) ------------------------------------------------------------

IMAGE_DEFECTS: list[tuple[str, bytes, str]] = [
    # Not a PNG, JPEG or WebP: the bytes decide, never the part's content type.
    ("animated GIF", animated("GIF"), "invalid_mime_type"),
    ("TIFF", image_bytes(64, 64, fmt="TIFF"), "invalid_mime_type"),
    ("BMP", image_bytes(64, 64, fmt="BMP"), "invalid_mime_type"),
    ("ICO", image_bytes(64, 64, fmt="ICO"), "invalid_mime_type"),
    ("PDF", image_bytes(64, 64, fmt="PDF"), "invalid_mime_type"),
    (
        "SVG",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>',
        "invalid_mime_type",
    ),
    ("HTML", b"<!doctype html><title>x</title>", "invalid_mime_type"),
    ("NUL bytes", b"\0" * 1000, "invalid_mime_type"),
    # A PNG, JPEG or WebP that is broken or truncated.
    ("PNG signature only", b"\x89PNG\r\n\x1a\n", "bad_request"),
    ("JPEG start of image only", b"\xff\xd8\xff", "bad_request"),
    ("WebP header only", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "bad_request"),
    ("truncated JPEG", half(PICTURE_JPEG), "bad_request"),
    ("truncated WebP", half(PICTURE_WEBP), "bad_request"),
    ("PNG header CRC broken", png_with_broken_header_crc(), "bad_request"),
    ("PNG declaring 0x0", png_declaring(0, 0), "bad_request"),
    ("PNG with bit depth 7", png_declaring(64, 64, bit_depth=7), "bad_request"),
    ("PNG without its pixel data", png_declaring(256, 256), "bad_request"),
    ("16-bit RGB PNG without its pixel data", png_declaring(64, 64, bit_depth=16), "bad_request"),
    # Bombs: refused from the header, before any pixel is decoded.
    ("PNG declaring 100000x100000", png_declaring(100_000, 100_000), "bad_request"),
    ("PNG declaring 2^31-1 square", png_declaring(2**31 - 1, 2**31 - 1), "bad_request"),
    ("PNG declaring one pixel over 4096x4096", png_declaring(4096, 4097), "bad_request"),
    ("JPEG declaring 65500x65500", jpeg_declaring(65_500, 65_500), "bad_request"),
    # Unusual but readable: decoded, then refused by SD 1.6's size rule (64 < 128).
    ("16-bit greyscale PNG", image_bytes(64, 64, "I;16"), "invalid_height_or_width"),
    ("CMYK JPEG", image_bytes(64, 64, "CMYK", "JPEG"), "invalid_height_or_width"),
    ("palette PNG", image_bytes(64, 64, "P"), "invalid_height_or_width"),
    ("greyscale with alpha PNG", image_bytes(64, 64, "LA"), "invalid_height_or_width"),
    ("1-bit PNG", image_bytes(64, 64, "1"), "invalid_height_or_width"),
    ("animated PNG", animated("PNG"), "invalid_height_or_width"),
    ("animated WebP", animated("WEBP"), "invalid_height_or_width"),
    ("PNG with trailing junk", SMALL + b"junk" * 100, "invalid_height_or_width"),
    ("1x1 PNG", image_bytes(1, 1), "invalid_height_or_width"),
]


@pytest.mark.parametrize(("case", "data", "name"), IMAGE_DEFECTS, ids=[c[0] for c in IMAGE_DEFECTS])
def test_init_image_defects(client: httpx.Client, case: str, data: bytes, name: str) -> None:
    message = assert_envelope(img2img(client, data), 400, name)["message"]
    if name != "invalid_height_or_width":
        assert message.startswith("init_image:")
    if name == "bad_request" and "declaring" not in case:
        assert "corrupt or truncated" in message


OTHER_UPLOADS: list[tuple[str, str, bytes, str]] = [
    # (case, file field, data, name) on masking (mask_image) and upscale (image)
    ("mask empty", "mask_image", b"", "invalid_file_size"),
    ("mask over 10 MiB", "mask_image", OVERSIZED, "invalid_file_size"),
    ("mask truncated WebP", "mask_image", half(PICTURE_WEBP), "bad_request"),
    ("mask bomb", "mask_image", png_declaring(100_000, 100_000), "bad_request"),
    ("mask text", "mask_image", b"white on the left", "invalid_mime_type"),
    ("mask 1x1", "mask_image", image_bytes(1, 1, "L"), "invalid_image_dimensions"),
    ("mask of another size", "mask_image", image_bytes(64, 32, "L"), "invalid_image_dimensions"),
    ("image empty", "image", b"", "invalid_file_size"),
    ("image over 10 MiB", "image", OVERSIZED, "invalid_file_size"),
    ("image truncated WebP", "image", half(PICTURE_WEBP), "bad_request"),
    ("image truncated JPEG", "image", half(PICTURE_JPEG), "bad_request"),
    ("image bomb", "image", png_declaring(100_000, 100_000), "bad_request"),
    ("image TIFF", "image", image_bytes(64, 64, fmt="TIFF"), "invalid_mime_type"),
    ("image animated GIF", "image", animated("GIF"), "invalid_mime_type"),
]


@pytest.mark.parametrize(
    ("case", "field", "data", "name"), OTHER_UPLOADS, ids=[c[0] for c in OTHER_UPLOADS]
)
def test_mask_and_upscale_image_defects(
    client: httpx.Client, case: str, field: str, data: bytes, name: str
) -> None:
    if field == "mask_image":
        fields = {"text_prompts[0][text]": "a", "mask_source": "MASK_IMAGE_WHITE"}
        files: Files = [
            ("init_image", ("i.png", SMALL, "image/png")),
            ("mask_image", ("m.png", data, "image/png")),
        ]
        response = form(client, MASK, fields, files)
    else:
        response = upscale(client, data)
    message = assert_envelope(response, 400, name)["message"]
    if name != "invalid_image_dimensions":
        assert message.startswith(f"{field}:")


# --- multipart tricks ------------------------------------------------------------------------

# Accepted shapes end at SD 1.6's size rule for the 64x64 init image (invalid_height_or_width).
INDEX_TRICKS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("negative index", [("text_prompts[-1][text]", "a")], "invalid_height_or_width"),
    (
        "20-digit index",
        [("text_prompts[99999999999999999999][text]", "a")],
        "invalid_height_or_width",
    ),
    (
        "weight without text at another index",
        [("text_prompts[0][text]", "a"), ("text_prompts[1][weight]", "-1")],
        "bad_request",
    ),
    ("weight only", [("text_prompts[0][weight]", "1")], "bad_request"),
    (
        "weight nan",
        [("text_prompts[0][text]", "a"), ("text_prompts[0][weight]", "nan")],
        "bad_request",
    ),
    (
        "weight inf",
        [("text_prompts[0][text]", "a"), ("text_prompts[0][weight]", "inf")],
        "bad_request",
    ),
    (
        "weight empty",
        [("text_prompts[0][text]", "a"), ("text_prompts[0][weight]", "")],
        "bad_request",
    ),
    ("empty index", [("text_prompts[][text]", "a")], "bad_request"),
    ("fractional index", [("text_prompts[1.5][text]", "a")], "bad_request"),
    ("plus sign index", [("text_prompts[+1][text]", "a")], "bad_request"),
    ("hex index", [("text_prompts[0x1][text]", "a")], "bad_request"),
    ("Arabic-Indic digit index", [("text_prompts[\u0661][text]", "a")], "bad_request"),
    ("unknown key", [("text_prompts[0][colour]", "a")], "bad_request"),
    ("key in another case", [("text_prompts[0][Text]", "a")], "bad_request"),
    ("no key", [("text_prompts[0]", "a")], "bad_request"),
    ("one level too deep", [("text_prompts[0][text][0]", "a")], "bad_request"),
    ("plain text_prompts", [("text_prompts", "a")], "bad_request"),
    ("JSON in text_prompts", [("text_prompts", '[{"text": "a"}]')], "bad_request"),
    ("extras not indexed", [("text_prompts[0][text]", "a"), ("extras", "{}")], "bad_request"),
    # A later field for the same name overrides an earlier one (the spec's rule for prompts;
    # every other field works the same way).
    (
        "later prompt overrides a long one",
        [("text_prompts[0][text]", "a" * 2001), ("text_prompts[0][text]", "a")],
        "invalid_height_or_width",
    ),
    (
        "later long prompt overrides a short one",
        [("text_prompts[0][text]", "a"), ("text_prompts[0][text]", "a" * 2001)],
        "bad_request",
    ),
    (
        "later steps overrides a bad one",
        [("text_prompts[0][text]", "a"), ("steps", "9"), ("steps", "10")],
        "invalid_height_or_width",
    ),
    (
        "later bad steps overrides a good one",
        [("text_prompts[0][text]", "a"), ("steps", "10"), ("steps", "9")],
        "bad_request",
    ),
]


@pytest.mark.parametrize(("case", "fields", "name"), INDEX_TRICKS, ids=[c[0] for c in INDEX_TRICKS])
def test_multipart_index_tricks(
    client: httpx.Client, case: str, fields: list[tuple[str, str]], name: str
) -> None:
    # Text parts as (None, value) file tuples: httpx keeps their order and duplicates.
    parts: Files = [(key, (None, value.encode(), "text/plain")) for key, value in fields]
    response = client.post(I2I, files=[*parts, ("init_image", ("i.png", SMALL, "image/png"))])
    assert_envelope(response, 400, name)


def test_prompts_of_weight_zero_only(client: httpx.Client) -> None:
    """Weight 0 takes no part, so no positive prompt is left (checked after the image's size
    rule: this init image is a valid 320x320)."""
    fields = {"text_prompts[0][text]": "a", "text_prompts[0][weight]": "0", "steps": "10"}
    files: Files = [("init_image", ("i.png", image_bytes(320, 320), "image/png"))]
    message = assert_envelope(form(client, I2I, fields, files), 400, "bad_request")["message"]
    assert "positive weight" in message


PART_TRICKS: list[tuple[str, str, Files, str]] = [
    (
        "init_image twice, the later one broken",
        I2I,
        [
            ("init_image", ("a.png", SMALL, "image/png")),
            ("init_image", ("b.png", b"junk", "image/png")),
        ],
        "invalid_mime_type",
    ),
    (
        "init_image twice, the later one good",
        I2I,
        [
            ("init_image", ("a.png", b"junk", "image/png")),
            ("init_image", ("b.png", SMALL, "image/png")),
        ],
        "invalid_height_or_width",
    ),
    ("steps sent as a file", I2I, [("steps", ("s.txt", b"10", "text/plain"))], "bad_request"),
    (
        "a prompt sent as a file",
        I2I,
        [("text_prompts[1][text]", ("p.txt", b"b", "text/plain"))],
        "bad_request",
    ),
    (
        "extras sent as a file",
        I2I,
        [("extras[a]", ("e.json", b"{}", "application/json"))],
        "bad_request",
    ),
    ("an unknown file part", I2I, [("thumbnail", ("t.png", SMALL, "image/png"))], "bad_request"),
    (
        "mask_image sent as text",
        MASK,
        [("mask_image", (None, b"m.png", "text/plain"))],
        "bad_request",
    ),
    ("image sent as text", ESRGAN, [("image", (None, b"i.png", "text/plain"))], "bad_request"),
]


@pytest.mark.parametrize(
    ("case", "path", "extra", "name"), PART_TRICKS, ids=[c[0] for c in PART_TRICKS]
)
def test_file_and_field_part_tricks(
    client: httpx.Client, case: str, path: str, extra: Files, name: str
) -> None:
    fields = {"text_prompts[0][text]": "a", "mask_source": "MASK_IMAGE_WHITE"}
    base: Files = (
        []
        if any(key == "init_image" for key, _ in extra)
        else [("init_image", ("i.png", SMALL, "image/png"))]
    )
    if path == ESRGAN:
        fields, base = {}, []
    message = assert_envelope(form(client, path, fields, [*base, *extra]), 400, name)["message"]
    if name == "bad_request":
        assert message.split(":")[0] in {key for key, _ in extra}


def multipart_raw(parts: bytes, boundary: str = "b") -> tuple[bytes, dict[str, str]]:
    return parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


PROMPT_PART = b'--b\r\nContent-Disposition: form-data; name="text_prompts[0][text]"\r\n\r\na\r\n'
IMAGE_PART = (
    b'--b\r\nContent-Disposition: form-data; name="init_image"; filename="i.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + SMALL + b"\r\n"
)
FRAMING: list[tuple[str, str, bytes, str]] = [
    # (case, Content-Type, body, name)
    ("no boundary parameter", "multipart/form-data", PROMPT_PART + b"--b--\r\n", "bad_request"),
    ("empty boundary", "multipart/form-data; boundary=", PROMPT_PART + b"--b--\r\n", "bad_request"),
    (
        "another boundary",
        "multipart/form-data; boundary=c",
        PROMPT_PART + b"--b--\r\n",
        "bad_request",
    ),
    ("garbage", "multipart/form-data; boundary=b", b"\x00\x01garbage" * 100, "bad_request"),
    ("empty body", "multipart/form-data; boundary=b", b"", "bad_request"),
    (
        "no closing boundary",
        "multipart/form-data; boundary=b",
        PROMPT_PART + IMAGE_PART,
        "bad_request",
    ),
    (
        "part without a name",
        "multipart/form-data; boundary=b",
        b"--b\r\nContent-Disposition: form-data\r\n\r\na\r\n--b--\r\n",
        "bad_request",
    ),
    (
        "part without Content-Disposition",
        "multipart/form-data; boundary=b",
        b"--b\r\nX-Thing: 1\r\n\r\na\r\n--b--\r\n",
        "bad_request",
    ),
    (
        "multipart/mixed",
        "multipart/mixed; boundary=b",
        PROMPT_PART + IMAGE_PART + b"--b--\r\n",
        "bad_request",
    ),
    # Read, then refused by the size rule.
    (
        "quoted boundary",
        'multipart/form-data; boundary="b"',
        PROMPT_PART + IMAGE_PART + b"--b--\r\n",
        "invalid_height_or_width",
    ),
    (
        "upper-case media type",
        "MULTIPART/FORM-DATA; boundary=b",
        PROMPT_PART + IMAGE_PART + b"--b--\r\n",
        "invalid_height_or_width",
    ),
    (
        "prompt that isn't UTF-8",
        "multipart/form-data; boundary=b",
        PROMPT_PART.replace(b"\r\na\r\n", b"\r\ncaf\xe9\r\n") + IMAGE_PART + b"--b--\r\n",
        "invalid_height_or_width",
    ),
]


@pytest.mark.parametrize(
    ("case", "content_type", "raw", "name"), FRAMING, ids=[c[0] for c in FRAMING]
)
def test_multipart_framing(
    client: httpx.Client, case: str, content_type: str, raw: bytes, name: str
) -> None:
    response = client.post(I2I, content=raw, headers={"Content-Type": content_type})
    assert_envelope(response, 400, name)


# --- odd header values -------------------------------------------------------------------------


def bad_authorizations(key: str) -> list[tuple[str, list[tuple[bytes, bytes]]]]:
    auth = b"Authorization"
    return [
        ("Basic scheme", [(auth, f"Basic {key}".encode())]),
        ("Token scheme", [(auth, f"Token {key}".encode())]),
        ("Bearer twice", [(auth, f"Bearer Bearer {key}".encode())]),
        ("key and more", [(auth, f"Bearer {key} extra".encode())]),
        ("tab after Bearer", [(auth, f"Bearer\t{key}".encode())]),
        ("key with a comma", [(auth, f"Bearer {key},".encode())]),
        ("10 kB key", [(auth, b"Bearer sk-" + b"a" * 10_000)]),
        ("non-ASCII bytes", [(auth, b"Bearer sk-\xff\xfe\xc3\xa9")]),
        ("control character", [(auth, f"Bearer {key[:10]}\x01{key[10:]}".encode())]),
        ("empty", [(auth, b"")]),
        (
            "bad key first of two",
            [(auth, b"Bearer sk-not-a-key"), (auth, f"Bearer {key}".encode())],
        ),
    ]


AUTH_CASES = [case for case, _ in bad_authorizations("sk-x" * 12)]


@pytest.mark.parametrize("path", [*READ_PATHS, T2I])
@pytest.mark.parametrize("case", AUTH_CASES)
def test_odd_authorization_is_401(
    server: Server, anonymous: httpx.Client, path: str, case: str
) -> None:
    headers = dict(bad_authorizations(server.key))[case]
    if path == T2I:
        response = anonymous.post(path, json=t2i_body(), headers=headers)
    else:
        response = anonymous.get(path, headers=headers)
    assert_envelope(response, 401, "unauthorized")


ODD_ORGANIZATIONS: list[tuple[str, bytes]] = [
    ("unknown", b"org-does-not-exist"),
    ("malformed", b"!!! not an id !!!"),
    ("10 kB", b"org-" + b"x" * 10_000),
    ("non-ASCII bytes", b"org-\xff\xfe"),
    ("control character", b"org-\x01"),
]


@pytest.mark.parametrize("path", ["/v1/engines/list", "/v1/user/balance", T2I])
@pytest.mark.parametrize(
    "organization", [o for _, o in ODD_ORGANIZATIONS], ids=[c for c, _ in ODD_ORGANIZATIONS]
)
def test_odd_organization_is_403(client: httpx.Client, path: str, organization: bytes) -> None:
    headers = [(b"Organization", organization)]
    if path == T2I:
        response = client.post(path, json=t2i_body(), headers=headers)
    else:
        response = client.get(path, headers=headers)
    assert_envelope(response, 403, "permission_denied")


TOLERATED_HEADERS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    # Free-form or ignored headers: odd values change nothing.
    ("Stability-Client-ID 8 kB", [(b"Stability-Client-ID", b"x" * 8000)]),
    ("Stability-Client-Version 8 kB", [(b"Stability-Client-Version", b"1." * 4000)]),
    ("Stability-Client-ID control characters", [(b"Stability-Client-ID", b"a\x01b\x7fc")]),
    ("Stability-Client-Version non-ASCII", [(b"Stability-Client-Version", b"v\xc3\xa9\xff")]),
    ("Accept garbage", [(b"Accept", b"garbage/;;q=x")]),
    ("Accept image/png", [(b"Accept", b"image/png")]),
    ("Organization empty (the default)", [(b"Organization", b"")]),
]


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize(
    "headers", [h for _, h in TOLERATED_HEADERS], ids=[c for c, _ in TOLERATED_HEADERS]
)
def test_tolerated_odd_headers_on_reads(
    client: httpx.Client, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()


@pytest.mark.parametrize(
    "organization", [o for _, o in ODD_ORGANIZATIONS], ids=[c for c, _ in ODD_ORGANIZATIONS]
)
def test_account_ignores_the_organization_header(client: httpx.Client, organization: bytes) -> None:
    response = client.get("/v1/user/account", headers=[(b"Organization", organization)])
    assert response.status_code == 200, response.text
    assert response.json()["organizations"]


# samples=2 with a 100 px width: an Accept that selects PNG fails invalid_samples (checked
# first), one that selects JSON fails the size rule.
ACCEPTS: list[tuple[str, list[bytes], str]] = [
    ("image/png upper case", [b"IMAGE/PNG"], "invalid_samples"),
    ("png first of two", [b"image/png, application/json"], "invalid_samples"),
    ("png preferred by q", [b"application/json;q=0.5, image/png"], "invalid_samples"),
    ("png with q=0.1, json q=0", [b"image/png;q=0.1, application/json;q=0"], "invalid_samples"),
    ("two header lines, png first", [b"image/png", b"application/json"], "invalid_samples"),
    ("png refused by q=0", [b"image/png;q=0"], "invalid_height_or_width"),
    ("png with unreadable q", [b"image/png;q=abc"], "invalid_height_or_width"),
    ("json first of two", [b"application/json, image/png"], "invalid_height_or_width"),
    (
        "two header lines, json first",
        [b"application/json", b"image/png"],
        "invalid_height_or_width",
    ),
    ("*/*", [b"*/*"], "invalid_height_or_width"),
    ("image/*", [b"image/*"], "invalid_height_or_width"),
    ("text/html", [b"text/html"], "invalid_height_or_width"),
    ("garbage", [b"garbage;;;,,,"], "invalid_height_or_width"),
    ("empty", [b""], "invalid_height_or_width"),
    ("8 kB", [b"application/json;" + b"a=b;" * 2000], "invalid_height_or_width"),
    ("non-ASCII", [b"image/p\xc3\xa9ng"], "invalid_height_or_width"),
]


@pytest.mark.parametrize(("case", "values", "name"), ACCEPTS, ids=[c[0] for c in ACCEPTS])
def test_odd_accept_on_generation(
    client: httpx.Client, case: str, values: list[bytes], name: str
) -> None:
    headers = [(b"Accept", value) for value in values]
    response = client.post(T2I, json=t2i_body(samples=2, width=100), headers=headers)
    assert_envelope(response, 400, name)


@pytest.mark.parametrize(
    "generation_id",
    ["short12", "x" * 65, "-starts-with-dash", "has/slash-0001", "has space 0001", "ünïcödé-0001"],
)
def test_odd_generation_id_header(client: httpx.Client, generation_id: str) -> None:
    # A valid request: the header is the only fault, refused before any job is queued.
    body = t2i_body(width=320, height=320)
    headers = [(b"Generation-Id", generation_id.encode())]
    message = assert_envelope(client.post(T2I, json=body, headers=headers), 400, "bad_request")
    assert message["message"].startswith("Generation-Id:")


# --- Content-Length that doesn't match the body ----------------------------------------------


def raw_post(server: Server, path: str, content_type: str, length: int, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {server.key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def test_content_length_shorter_than_the_body(server: Server) -> None:
    """Only the declared bytes are the body: a cut JSON body, a cut multipart body."""
    raw = json.dumps(t2i_body(width=100)).encode()
    answer = raw_exchange(server, raw_post(server, T2I, "application/json", 10, raw))
    assert_envelope(first_response(answer), 400, "bad_request")
    parts = PROMPT_PART + IMAGE_PART + b"--b--\r\n"
    content_type = "multipart/form-data; boundary=b"
    answer = raw_exchange(server, raw_post(server, I2I, content_type, 40, parts))
    assert_envelope(first_response(answer), 400, "bad_request")


@pytest.mark.parametrize(
    "request_head",
    [
        pytest.param(b"POST /v1/user/balance HTTP/1.1\r\nContent-Length: abc\r\n", id="length abc"),
        pytest.param(b"POST /v1/user/balance HTTP/1.1\r\nContent-Length: -5\r\n", id="length -5"),
        pytest.param(b"GET /v1/user/balance HTTP/1.1\r\nno colon here\r\n", id="header line"),
        pytest.param(b"GET /v1/user/balance HTTP/1.1 extra\r\n", id="request line"),
    ],
)
def test_a_request_that_is_not_http_gets_the_envelope(server: Server, request_head: bytes) -> None:
    """What h11 can't parse never reaches the app; the server still answers in the envelope
    (uvicorn's own answer is plain text) and closes the connection."""
    answer = first_response(raw_exchange(server, request_head + b"Host: localhost\r\n\r\n"))
    assert_envelope(answer, 400, "bad_request")
    assert answer.headers["connection"] == "close"


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        (T2I, "application/json", b'{"text_prompts":[{"text":"a"'),
        (I2I, "multipart/form-data; boundary=b", PROMPT_PART + IMAGE_PART[:100]),
    ],
    ids=["json", "multipart"],
)
def test_client_that_stops_before_its_content_length(
    server: Server, path: str, content_type: str, body: bytes
) -> None:
    """The client promises more than it sends, then closes: its fault, not a server error."""

    def answered() -> int:
        return sum(1 for r in log_records(server) if r.get("path") == path and "status" in r)

    before = answered()
    started = time.monotonic()
    raw_exchange(server, raw_post(server, path, content_type, 5000, body), half_close=True)
    while answered() == before and time.monotonic() - started < QUICK_S:
        time.sleep(0.05)
    last = [r for r in log_records(server) if r.get("path") == path and "status" in r][-1]
    assert last["status"] == 400, last
    assert not [r for r in log_records(server) if r.get("level") == "ERROR"]


# --- and through all of it -------------------------------------------------------------------


def test_no_request_of_this_module_was_a_server_error(server: Server, client: httpx.Client) -> None:
    assert client.get("/v1/user/balance").status_code == 200  # still serving
    records = assert_no_server_errors(server)
    assert [r["status"] for r in records if r.get("message") == "request"]
