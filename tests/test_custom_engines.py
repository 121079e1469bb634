"""Engines of the operator's own, from configuration: an id of their own, weights from a
folder, a file or the Hub, the family named or read from the weights, the family's rules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from localstability.app import create_app
from localstability.cli import app
from localstability.config import EngineConfig, Settings
from localstability.engines import CATALOGUE, Family
from localstability.inference.weights import detect_family
from tests.conftest import Cluster
from tests.helpers import t2i_body
from tests.test_accounts_engines import assert_envelope

MINE = "my-brand-sd1.5"
FROM_FILE = "house-sd1-file"


@pytest.mark.parametrize(
    ("folder", "family"),
    [
        ("sd1", Family.SD1),
        ("sd2", Family.SD2),
        ("sdxl", Family.SDXL),
        ("sd-x4-upscaler", Family.LATENT_UPSCALER),
    ],
)
def test_the_family_is_read_from_a_diffusers_folder(
    tiny_dir: Path, folder: str, family: Family
) -> None:
    assert detect_family(str(tiny_dir / folder)) == family


@pytest.mark.parametrize(
    ("tensor", "family"),
    [
        ("conditioner.embedders.1.model.ln_final.weight", Family.SDXL),
        ("cond_stage_model.model.ln_final.weight", Family.SD2),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight", Family.SD1),
    ],
)
def test_the_family_is_read_from_a_single_files_tensor_names(
    tmp_path: Path, tensor: str, family: Family
) -> None:
    path = tmp_path / "model.safetensors"
    save_file({tensor: torch.zeros(2), "model.diffusion_model.out.0.weight": torch.zeros(2)}, path)
    assert detect_family(str(path)) == family


def test_weights_that_dont_say_give_no_family(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, path)
    assert detect_family(str(path)) is None
    assert detect_family(str(tmp_path / "missing-folder")) is None
    assert detect_family("someone/not-in-the-cache") is None  # offline: the cache only


@pytest.mark.parametrize("engine_id", ["My-Engine", "-leading-dash", "a/b", "x" * 65, "émoji"])
def test_an_engine_id_must_be_a_path_segment(engine_id: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="lowercase letters and digits"):
        Settings(data_dir=tmp_path, engines={engine_id: EngineConfig(source=str(tmp_path))})


def test_an_engine_of_ones_own_needs_a_source(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs a source"):
        Settings(data_dir=tmp_path, engines={"mine": EngineConfig(family=Family.SD1)})


@pytest.fixture(scope="module")
def app_client(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A server with the tiny SD 1 folder as the catalogue's SD 1.6 and as an engine of the
    operator's own (family read from the folder), the same weights as one original-format
    single file (family read from its tensor names, component configs from the folder), and
    SDXL under another id (family named)."""
    engines = {
        "stable-diffusion-v1-6": EngineConfig(source=str(tiny_dir / "sd1")),
        MINE: EngineConfig(
            source=str(tiny_dir / "sd1"),
            name="My Brand 1.5",
            description="Our fine-tune, in our colours",
            cost_factor=0.1,
        ),
        FROM_FILE: EngineConfig(
            source=str(tiny_dir / "sd1-single" / "tiny-sd1.safetensors"),
            config=str(tiny_dir / "sd1"),
        ),
        "house-xl": EngineConfig(source=str(tiny_dir / "sdxl"), family=Family.SDXL),
    }
    data = tmp_path_factory.mktemp("custom-engines") / "data"
    settings = Settings(data_dir=data, offline=True, log_json=False, engines=engines)
    with TestClient(create_app(settings)) as client:
        key = (data / "admin-key.txt").read_text().strip()
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


def test_ones_own_engines_are_listed_after_the_catalogues(app_client: TestClient) -> None:
    listed = app_client.get("/v1/engines/list").json()
    # The SD 3.5 and FLUX.1 engines are not configured here and their weights are absent: not
    # listed (docs/models.md).
    catalogue = [id_ for id_, engine in CATALOGUE.items() if not engine.needs_weights]
    assert len(catalogue) == len(CATALOGUE) - 5
    assert [e["id"] for e in listed] == [*catalogue, MINE, FROM_FILE, "house-xl"]
    mine = listed[-3]
    assert mine == {
        "id": MINE,
        "name": "My Brand 1.5",
        "description": "Our fine-tune, in our colours",
        "type": "PICTURE",
        "loras": [],  # no adapter in this deployment's lora_dir
    }
    assert listed[-1]["name"] == "house-xl"  # no name given: its id


def test_ones_own_engine_draws_what_its_weights_draw_under_its_familys_rules(
    app_client: TestClient,
) -> None:
    body = t2i_body(seed=7, width=320, height=320)

    def spent(engine_id: str) -> tuple[float, list[dict[str, object]]]:
        before = app_client.get("/v1/user/balance").json()["credits"]
        made = app_client.post(f"/v1/generation/{engine_id}/text-to-image", json=body)
        assert made.status_code == 200, made.text
        return before - app_client.get("/v1/user/balance").json()["credits"], made.json()[
            "artifacts"
        ]

    mine, theirs = spent(MINE), spent("stable-diffusion-v1-6")
    assert mine[1] == theirs[1]  # the same weights and pipeline: the same pixels
    # Its own price factor, 0.1 against 0.5 (each rounded to the micro-credit).
    assert mine[0] == pytest.approx(theirs[0] / 5, rel=0.01)
    # The family's size rules: SD 1's sides from 320, SDXL's nine sizes.
    too_small = app_client.post(f"/v1/generation/{MINE}/text-to-image", json=t2i_body(width=256))
    assert_envelope(too_small, 400, "invalid_height_or_width")
    xl = app_client.post("/v1/generation/house-xl/text-to-image", json=t2i_body(width=512))
    assert_envelope(xl, 400, "invalid_sdxl_v1_dimensions")


def test_ones_own_engine_from_a_single_file_draws_what_the_folder_draws(
    app_client: TestClient,
) -> None:
    body = t2i_body(seed=11, width=320, height=320)
    made = app_client.post(f"/v1/generation/{FROM_FILE}/text-to-image", json=body)
    assert made.status_code == 200, made.text
    folder = app_client.post("/v1/generation/stable-diffusion-v1-6/text-to-image", json=body)
    assert folder.status_code == 200, folder.text
    # The file holds the folder's weights under the original names: the same pixels.
    assert made.json()["artifacts"] == folder.json()["artifacts"]


def test_weights_whose_family_cant_be_told_stop_the_start_with_a_message(
    tmp_path: Path,
) -> None:
    (tmp_path / "weights").mkdir()
    config = tmp_path / "localstability.toml"
    config.write_text(f'offline = true\n[engines.mystery]\nsource = "{tmp_path / "weights"}"\n')
    listed = models("list", "--config", str(config))
    assert listed.exit_code == 2
    assert "engine mystery: its weights" in listed.stderr and "set its family" in listed.stderr
    assert "Traceback" not in listed.stderr


def models(*args: str) -> Result:
    """`localstability models ARGS` in this process (the command's own app and output)."""
    unset = {name: None for name in os.environ if name.startswith("LOCALSTABILITY_")}
    return CliRunner().invoke(app, ["models", *args], env={**unset, "HF_HUB_OFFLINE": "1"})


def test_models_add_and_remove_edit_the_file_and_keep_the_rest(
    tiny_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "localstability.toml"
    original = "# our server\noffline = true  # no Hub here\n"
    config.write_text(original)
    added = models(
        "add", "house-sd2", "--source", str(tiny_dir / "sd2"), "--name", "House 2",
        "--config", str(config),
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    text = config.read_text()
    assert text.startswith(original)  # comments and settings kept
    assert '[engines.house-sd2]\nsource = "' in text and 'name = "House 2"' in text
    assert "family" not in text  # read from the weights at each start
    listed = models("list", "--config", str(config))
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("house-sd2 ")]
    assert row.split()[1] == "sd2"
    again = models("add", "house-sd2", "--source", str(tiny_dir / "sd1"), "--config", str(config))
    assert again.exit_code == 2 and "already" in again.stderr
    mystery = tmp_path / "mystery"
    mystery.mkdir()
    refused = models("add", "mystery", "--source", str(mystery), "--config", str(config))
    assert refused.exit_code == 2 and "set its family" in refused.stderr
    assert config.read_text() == text  # nothing written
    assert not list(tmp_path.glob(".localstability.toml*"))  # no scratch file left
    removed = models("remove", "house-sd2", "--config", str(config))
    assert removed.exit_code == 0, removed.output
    assert "house-sd2" not in config.read_text() and config.read_text().startswith(original)
    gone = models("remove", "house-sd2", "--config", str(config))
    assert gone.exit_code == 1 and "has no [engines.house-sd2]" in gone.stderr


def test_models_add_without_a_file_says_what_to_add(tiny_dir: Path) -> None:
    shown = models("add", "house-xl", "--source", str(tiny_dir / "sdxl"), "--family", "sdxl")
    assert shown.exit_code == 0
    assert f'[engines.house-xl]\nsource = "{tiny_dir / "sdxl"}"\nfamily = "sdxl"' in shown.stdout


def test_ones_own_engine_runs_on_the_workers_and_every_replica_lists_it(cluster: Cluster) -> None:
    body = t2i_body(seed=3)
    with cluster.client(0) as a, cluster.client(1) as b:
        assert [e["name"] for e in b.get("/v1/engines/list").json()][-1] == "House SD1"
        mine = a.post("/v1/generation/house-sd1/text-to-image", json=body)
        assert mine.status_code == 200, mine.text
        theirs = b.post("/v1/generation/stable-diffusion-v1-6/text-to-image", json=body)
    assert mine.json()["artifacts"] == theirs.json()["artifacts"]  # same weights, same pixels
