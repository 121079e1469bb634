"""The command line: models list / pull / make-tiny, keys create."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from localstability.tiny import FAMILIES
from tests.conftest import Server, run_cli


def test_make_tiny_writes_labelled_fixtures_and_config(tiny_dir: Path) -> None:
    for family in FAMILIES:
        folder = tiny_dir / family
        assert (folder / "model_index.json").is_file()
        assert "TEST FIXTURE" in (folder / "LOCALSTABILITY_TEST_FIXTURE.txt").read_text()
    config = (tiny_dir / "localstability.toml").read_text()
    assert "TEST FIXTURES" in config
    for engine_id in (
        "stable-diffusion-v1-6",
        "stable-diffusion-512-v2-1",
        "stable-diffusion-xl-1024-v1-0",
        "stable-diffusion-xl-beta-v2-2-2",
        "stable-diffusion-3-5-large",
        "stable-diffusion-3-5-large-turbo",
        "stable-diffusion-3-5-medium",
        "flux-1-schnell",
        "flux-1-dev",
    ):
        assert f"[engines.{engine_id}]" in config


def test_models_list_shows_readiness(tiny_dir: Path) -> None:
    output = run_cli("models", "list", "--config", str(tiny_dir / "localstability.toml")).stdout
    header, *rows = output.splitlines()
    assert header.split() == ["ENGINE", "FAMILY", "STATE", "WEIGHTS"]
    at = next(i for i, row in enumerate(rows) if row.startswith("LoRA adapters in "))
    rows, adapters = rows[:at], rows[at:]
    assert adapters == [
        f"LoRA adapters in {tiny_dir / 'loras'}:",
        "  sd1: tiny-sd1-detail, tiny-sd1-style",
        "  sdxl: tiny-sdxl-style",
    ]
    lines = {line.split()[0]: line for line in rows}
    assert len(lines) == 12
    assert "ready" in lines["localstability-shapes-v1"]
    assert "ready" in lines["stable-diffusion-v1-6"]
    assert "tiny random-weight test fixture" in lines["stable-diffusion-v1-6"]
    assert all("ready" in line for line in lines.values())
    default = run_cli("models", "list", LOCALSTABILITY_DATA_DIR=str(tiny_dir / "empty")).stdout
    assert "stabilityai/stable-diffusion-xl-base-1.0" in default
    esrgan = next(line for line in default.splitlines() if line.startswith("esrgan-v1-x2plus"))
    assert "not downloaded" in esrgan
    flux = next(line for line in default.splitlines() if line.startswith("flux-1-dev"))
    assert "not downloaded" in flux and "black-forest-labs/FLUX.1-dev" in flux
    shapes = next(line for line in default.splitlines() if line.startswith("localstability-shapes"))
    assert "ready" in shapes  # shipped inside the package


def test_models_pull(tiny_dir: Path) -> None:
    config = str(tiny_dir / "localstability.toml")
    ready = run_cli("models", "pull", "stable-diffusion-v1-6", "--config", config)
    assert "stable-diffusion-v1-6: ready" in ready.stdout
    # Offline, a hub engine can't be fetched: a clear message, exit 1, no traceback.
    failed = run_cli("models", "pull", "stable-diffusion-x4-latent-upscaler", check=False)
    assert failed.returncode == 1
    assert "stable-diffusion-x4-latent-upscaler is not available" in failed.stderr
    assert "Traceback" not in failed.stderr
    unknown = run_cli("models", "pull", "no-such-engine", check=False)
    assert unknown.returncode == 1
    assert "was not found" in unknown.stderr


def test_models_pull_esrgan_offline_converts_the_packaged_weights(tmp_path: Path) -> None:
    pulled = run_cli("models", "pull", "esrgan-v1-x2plus", LOCALSTABILITY_DATA_DIR=str(tmp_path))
    assert "offline fallback packaged:realesrgan-x4plus" in pulled.stdout
    assert (tmp_path / "models" / "realesrgan-x4plus.safetensors").is_file()
    listed = run_cli("models", "list", LOCALSTABILITY_DATA_DIR=str(tmp_path)).stdout
    esrgan = next(line for line in listed.splitlines() if line.startswith("esrgan-v1-x2plus"))
    assert "ready (fallback)" in esrgan
    assert "serving packaged:realesrgan-x4plus" in esrgan
    *_, note, adapters = listed.splitlines()  # the table's note, then the LoRA adapters
    assert note.startswith("ready (fallback): the engine's own weights are not")
    assert adapters == f"LoRA adapters in {tmp_path / 'loras'}: none"


def test_keys_create_prints_only_the_key(tmp_path: Path) -> None:
    result = run_cli(
        "keys",
        "create",
        "--email",
        "carol@example.com",
        "--credits",
        "5",
        LOCALSTABILITY_DATA_DIR=str(tmp_path),
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-")
    again = run_cli(
        "keys", "create", "--email", "carol@example.com", LOCALSTABILITY_DATA_DIR=str(tmp_path)
    )
    assert again.stdout.strip() != lines[0]


def test_keys_list_and_revoke(server: Server) -> None:
    config = str(server.config)
    key = run_cli("keys", "create", "--email", "dave@example.com", "--config", config)
    secret = key.stdout.strip()
    url = server.base_url + "/v1/user/balance"
    assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    def listed() -> str:
        return run_cli("keys", "list", "--email", "dave@example.com", "--config", config).stdout

    table = listed()
    assert secret not in table
    assert table.splitlines()[0].split() == [
        "PREFIX",
        "EMAIL",
        "REVOKED",
        "CREATED_AT",
        "LAST_USED_AT",
    ]
    [info] = json.loads(
        run_cli("keys", "list", "--email", "dave@example.com", "--json", "--config", config).stdout
    )
    prefix = info["prefix"]
    assert secret.startswith(prefix) and info["revoked"] is False and info["last_used_at"]
    assert "revoked 1 key" in run_cli("keys", "revoke", prefix, "--config", config).stdout
    refused = httpx.get(url, headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401 and refused.json()["name"] == "unauthorized"
    assert "True" in listed().splitlines()[1]
    again = run_cli("keys", "revoke", prefix, "--config", config, check=False)
    assert again.returncode == 1


def test_admin_commands(tmp_path: Path) -> None:
    env = {"LOCALSTABILITY_DATA_DIR": str(tmp_path)}
    org = run_cli("orgs", "create", "--name", "Acme", "--credits", "10", env=env).stdout.strip()
    assert org.startswith("org-")
    run_cli(
        "users", "create", "--email", "ann@acme.example", "--org", org, "--role", "ADMIN", env=env
    )
    run_cli("users", "create", "--email", "ben@acme.example", env=env)
    joined = run_cli("orgs", "add-member", "--org", org, "--email", "ben@acme.example", env=env)
    assert joined.stdout.strip() == f"ben@acme.example is MEMBER of {org}"
    assert run_cli("orgs", "grant", "--org", org, "2.5", "--note", "top-up", env=env).stdout == (
        f"{org}: 12.5 credits\n"
    )
    refused = run_cli("orgs", "grant", "--org", org, "--", "-100", check=False, env=env)
    assert refused.returncode == 1 and "below zero" in refused.stderr
    assert "Traceback" not in refused.stderr
    users = {u["email"]: u for u in json.loads(run_cli("users", "list", "--json", env=env).stdout)}
    assert users["ann@acme.example"]["organizations"][0]["role"] == "ADMIN"
    assert len(users["ben@acme.example"]["organizations"]) == 2
    [acme] = [
        o for o in json.loads(run_cli("orgs", "list", "--json", env=env).stdout) if o["id"] == org
    ]
    assert acme["credits"] == 12.5
    assert {m["email"] for m in acme["members"]} == {"ann@acme.example", "ben@acme.example"}
    shown = run_cli("ledger", "show", "--org", org, env=env).stdout
    assert "top-up" in shown and shown.strip().endswith("the ledger adds up")
    missing = run_cli("ledger", "show", "--org", "org-nope", check=False, env=env)
    assert missing.returncode == 1 and "no organization org-nope" in missing.stderr
