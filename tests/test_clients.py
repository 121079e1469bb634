"""The real third-party clients against our server: PyPI `stabilityai` and npm `modelfusion`.

Both are installed by scripts/setup-clients.sh (run by `make test` before pytest); when they are
missing these tests fail rather than skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, Server
from tests.test_accounts_engines import ENGINE_IDS

PROBE = REPO / "tests" / "clients" / "stabilityai_probe.py"
PROBE_PYTHON = REPO / ".venv-stabilityai" / "bin" / "python"
JS_DIR = REPO / "tests" / "clients" / "js"
MODELFUSION_SCRIPT = JS_DIR / "modelfusion_t2i.mjs"
SETUP_HINT = "run scripts/setup-clients.sh (or `make clients`) to install the client libraries"
SD1 = "stable-diffusion-v1-6"
SDXL = "stable-diffusion-xl-1024-v1-0"
PROMPT = "a lighthouse on a cliff"
NEGATIVE = "fog, blur"
SMALL: dict[str, Any] = {"width": 320, "height": 320, "steps": 10}
TIMEOUT = 300  # per client subprocess; generous for a loaded 2-core machine
# probe(action, key=None, **json_args) and modelfusion(engine, **env_settings): one JSON result.
Probe = Callable[..., dict[str, Any]]
Modelfusion = Callable[..., dict[str, Any]]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def direct_pngs(server: Server, engine: str, body: dict[str, Any]) -> list[bytes]:
    """Our server's PNGs for a text-to-image body, fetched directly with httpx."""
    with server.client() as http:
        response = http.post(f"/v1/generation/{engine}/text-to-image", json=body)
    assert response.status_code == 200, response.text
    return [base64.b64decode(a["base64"]) for a in response.json()["artifacts"]]


def run_json(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a client script and parse the one JSON line it prints on stdout."""
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output from {command[:3]}\nstderr:\n{result.stderr[-3000:]}"
    output: dict[str, Any] = json.loads(lines[-1])
    assert (result.returncode == 0) == output["ok"], (result.returncode, output)
    return output


@pytest.fixture(scope="module")
def probe(server: Server) -> Probe:
    return probe_for(server)


def probe_for(server: Server) -> Probe:
    """The stabilityai client against `server` (its bootstrap key unless told another)."""
    if not PROBE_PYTHON.exists():
        pytest.fail(f"{PROBE_PYTHON} is missing: {SETUP_HINT}")

    def call(action: str, key: str | None = None, **args: Any) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STABILITY_")}
        command = [str(PROBE_PYTHON), str(PROBE), server.base_url, key or server.key, action]
        return run_json([*command, json.dumps(args)], env)

    return call


@pytest.fixture(scope="module")
def modelfusion(server: Server) -> Modelfusion:
    return modelfusion_for(server)


def modelfusion_for(server: Server) -> Modelfusion:
    """modelfusion's text-to-image against `server`, with its bootstrap key."""
    if not (JS_DIR / "node_modules" / "modelfusion").is_dir():
        pytest.fail(f"{JS_DIR / 'node_modules'} has no modelfusion: {SETUP_HINT}")
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: {SETUP_HINT}")

    def call(engine: str, **settings: Any) -> dict[str, Any]:
        env = {
            **os.environ,
            "BASE_URL": server.base_url + "/v1",
            "STABILITY_API_KEY": server.key,
            "ENGINE": engine,
            "PROMPT": PROMPT,
            **{name.upper(): str(value) for name, value in settings.items()},
        }
        return run_json([node, str(MODELFUSION_SCRIPT)], env)

    return call


# ---- stabilityai (PyPI 1.0.5) ------------------------------------------------------------


def test_stabilityai_engines_list(probe: Probe) -> None:
    out = probe("engines")
    assert out["ok"], out
    assert out["engines"] == ENGINE_IDS
    assert out["model_error"] is None


def test_stabilityai_account_matches_its_model(probe: Probe, client: httpx.Client) -> None:
    out = probe("account")
    assert out["ok"], out
    assert out["model_error"] is None
    assert out["account"] == client.get("/v1/user/account").json()


def test_stabilityai_balance(probe: Probe, client: httpx.Client) -> None:
    out = probe("balance")
    assert out["ok"], out
    assert out["model_error"] is None
    assert out["credits"] == pytest.approx(client.get("/v1/user/balance").json()["credits"])
    assert 0 < out["credits"] <= 1000


def test_stabilityai_text_to_image_gets_our_exact_png(probe: Probe, server: Server) -> None:
    out = probe("text-to-image", engine=SD1, prompt=PROMPT, seed=4321, **SMALL)
    assert out["ok"], out
    [artifact] = out["artifacts"]
    assert (artifact["width"], artifact["height"]) == (320, 320)
    assert artifact["seed"] == 4321
    assert artifact["finish_reason"].endswith("SUCCESS")
    body = {"text_prompts": [{"text": PROMPT}], "seed": 4321, **SMALL}
    [png] = direct_pngs(server, SD1, body)
    assert artifact["png_sha256"] == sha256(png)


def test_stabilityai_samples_get_consecutive_seeds(probe: Probe, server: Server) -> None:
    out = probe("text-to-image", engine=SD1, prompt=PROMPT, seed=99, samples=2, **SMALL)
    assert out["ok"], out
    assert [a["seed"] for a in out["artifacts"]] == [99, 100]
    body = {"text_prompts": [{"text": PROMPT}], "seed": 99, "samples": 2, **SMALL}
    pngs = direct_pngs(server, SD1, body)
    assert [a["png_sha256"] for a in out["artifacts"]] == [sha256(p) for p in pngs]
    assert pngs[0] != pngs[1]


def test_stabilityai_default_engine_is_sdxl_1024(probe: Probe) -> None:
    out = probe("text-to-image", prompt=PROMPT, seed=7, steps=10)
    assert out["ok"], out
    [artifact] = out["artifacts"]
    assert (artifact["width"], artifact["height"]) == (1024, 1024)
    assert artifact["seed"] == 7


@pytest.mark.parametrize(
    ("action", "args", "key", "status", "error_type"),
    [
        ("text-to-image", {"engine": SD1, "width": 1000}, None, 400, "YouAreHoldingItWrong"),
        ("text-to-image", {"engine": "no-such-engine"}, None, 404, "ResourceNotFound"),
        ("text-to-image", {"engine": SD1}, "sk-not-a-key", 401, "ApiKeyIsMissingOrInvalid"),
        ("balance", {}, "sk-not-a-key", 401, "ClientResponseError"),
    ],
    ids=["invalid-width", "unknown-engine", "bad-key-post", "bad-key-get"],
)
def test_stabilityai_raises_with_our_status(
    probe: Probe, action: str, args: dict[str, Any], key: str | None, status: int, error_type: str
) -> None:
    if action == "text-to-image":
        args = {"prompt": PROMPT, "seed": 1, **SMALL, **args}
    out = probe(action, key=key, **args)
    assert not out["ok"], out
    assert out["status"] == status, out
    assert out["error_type"] == error_type, out


# ---- modelfusion (npm) -------------------------------------------------------------------


@pytest.mark.parametrize("negative", [None, NEGATIVE], ids=["prompt", "negative-prompt"])
def test_modelfusion_text_to_image_gets_our_exact_png(
    modelfusion: Modelfusion, server: Server, negative: str | None
) -> None:
    extra = {"negative_prompt": negative} if negative else {}
    out = modelfusion(SD1, seed=2024, **SMALL, **extra)
    assert out["ok"], out
    assert (out["width"], out["height"]) == (320, 320)
    assert out["count"] == 1
    assert out["seed"] == 2024
    assert out["finish_reason"] == "SUCCESS"
    prompts: list[dict[str, Any]] = [{"text": PROMPT}]
    if negative:
        prompts = [{"text": PROMPT, "weight": 1}, {"text": negative, "weight": -1}]
    [png] = direct_pngs(server, SD1, {"text_prompts": prompts, "seed": 2024, **SMALL})
    assert out["png_sha256"] == sha256(png)


def test_modelfusion_negative_prompt_changes_the_image(modelfusion: Modelfusion) -> None:
    plain = modelfusion(SD1, seed=5, **SMALL)
    negative = modelfusion(SD1, seed=5, negative_prompt=NEGATIVE, **SMALL)
    assert plain["ok"] and negative["ok"], (plain, negative)
    assert plain["png_sha256"] != negative["png_sha256"]


def test_modelfusion_unknown_engine_reports_our_envelope(
    modelfusion: Modelfusion, client: httpx.Client
) -> None:
    out = modelfusion("no-such-engine", seed=1, **SMALL)
    assert not out["ok"], out
    assert out["status"] == 404
    direct = client.post(
        "/v1/generation/no-such-engine/text-to-image",
        json={"text_prompts": [{"text": PROMPT}], "seed": 1, **SMALL},
    )
    assert direct.status_code == 404
    message = direct.json()["message"]
    assert message == "The specified engine (ID no-such-engine) was not found."
    assert out["error"] == message


def _direct_multipart(
    server: Server, path: str, fields: dict[str, str], files: dict[str, bytes]
) -> bytes:
    with server.client() as http:
        response = http.post(
            path, data=fields, files={name: ("f.png", data) for name, data in files.items()}
        )
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["artifacts"][0]["base64"])


def test_stabilityai_image_to_image_gets_our_exact_png(
    probe: Probe, server: Server, tmp_path: Any
) -> None:
    from tests.helpers import encode, sample_picture

    init = tmp_path / "init.png"
    init.write_bytes(encode(sample_picture(320, 384)))
    result = probe(
        "image-to-image",
        engine=SD1,
        image=str(init),
        prompt=PROMPT,
        steps=10,
        seed=55,
        image_strength=0.4,
    )
    artifact = result["artifacts"][0]
    assert (artifact["width"], artifact["height"], artifact["seed"]) == (320, 384, 55)
    direct = _direct_multipart(
        server,
        f"/v1/generation/{SD1}/image-to-image",
        {"text_prompts[0][text]": PROMPT, "steps": "10", "seed": "55", "image_strength": "0.4"},
        {"init_image": init.read_bytes()},
    )
    assert artifact["png_sha256"] == sha256(direct)


def test_stabilityai_upscale(probe: Probe, server: Server, tmp_path: Any) -> None:
    from tests.helpers import encode, sample_picture

    image = tmp_path / "small.png"
    image.write_bytes(encode(sample_picture(256, 192)))
    # stabilityai 1.0.5 always sends width=1024: 256x192 becomes 1024x768.
    result = probe("upscale", engine="esrgan-v1-x2plus", image=str(image))
    artifact = result["artifacts"][0]
    assert (artifact["width"], artifact["height"]) == (1024, 768)
    direct = _direct_multipart(
        server,
        "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        {"width": "1024"},
        {"image": image.read_bytes()},
    )
    assert artifact["png_sha256"] == sha256(direct)
