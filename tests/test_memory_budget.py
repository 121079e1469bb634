"""Memory: a budget of loaded pipelines (least recently used unloaded), loads that never hold
up the requests of engines already loaded, and preloads at start. One server of its own: the
tiny models and two engines on copies of the tiny SD1, `max_loaded_engines = 2`, `preload =
[SD1, slow-hub]`, where slow-hub is an engine of the operator's own whose weights come from a
"Hub" (HF_ENDPOINT) that takes every connection and answers none until the test lets it go: a
load that lasts as long as the test wants, without a clock."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment, run_cli, start_deployment
from tests.helpers import t2i_body
from tests.test_jobs import finished, wait_for
from tests.test_metrics import Samples, scrape, value

SD1 = "stable-diffusion-v1-6"
# Engines of the operator's own on copies of the tiny SD1 (sources of their own: each loads
# a pipeline of its own), at SD1's smallest size, the cheapest.
COPY_A, COPY_B = "copy-a", "copy-b"
SLOW = "slow-hub"
LOADS = "localstability_model_load_seconds_count"
LOADED = "localstability_pipelines_loaded"
UNLOADS = "localstability_pipeline_unloads_total"


class HangingHub:
    """A TCP server that takes connections and answers nothing until `let_go`; then it
    closes them, and every later one at once (the Hub can't be reached)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked = threading.Event()
        self.gone = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            if self.gone.is_set():
                connection.close()
                continue
            self.held.append(connection)
            self.asked.set()

    def let_go(self) -> None:
        self.gone.set()
        for connection in self.held:
            connection.close()

    def close(self) -> None:
        self.let_go()
        self.sock.close()


@pytest.fixture(scope="module")
def hub() -> Any:
    hanging = HangingHub()
    yield hanging
    hanging.close()


@pytest.fixture(scope="module")
def budgeted(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: Any, hub: HangingHub
) -> Deployment:
    directory = tmp_path_factory.mktemp("budget")
    text = (tiny_dir / "localstability.toml").read_text()
    text = f'max_loaded_engines = 2\npreload = ["{SD1}", "{SLOW}"]\n' + text
    text += f'\n[engines.{SLOW}]\nsource = "localstability-tests/hanging-hub"\nfamily = "sd1"\n'
    for engine in (COPY_A, COPY_B):
        shutil.copytree(tiny_dir / "sd1", directory / engine)
        text += f'\n[engines.{engine}]\nsource = "{directory / engine}"\nfamily = "sd1"\n'
    (directory / "base").mkdir()
    (directory / "base" / "localstability.toml").write_text(text)
    return start_deployment(
        directory / "base",
        directory,
        "sqlite",
        request,
        LOCALSTABILITY_OFFLINE="false",
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=f"http://127.0.0.1:{hub.port}",
        HF_HOME=str(directory / "hf"),
        HF_HUB_ETAG_TIMEOUT="3600",
        HF_HUB_DOWNLOAD_TIMEOUT="3600",
    )


def image(client: httpx.Client, engine: str, seed: int) -> None:
    body = t2i_body(width=320, height=320, seed=seed)
    answer = client.post(f"/v1/generation/{engine}/text-to-image", json=body)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["artifacts"]) == 1


def loads(samples: Samples, engine: str) -> float:
    return samples.get((LOADS, (("engine", engine),)), 0.0)


def unloads(samples: Samples, engine: str) -> float:
    return samples.get((UNLOADS, (("engine", engine),)), 0.0)


def test_preload_and_a_load_in_progress_hold_up_no_loaded_engine(
    budgeted: Deployment, hub: HangingHub
) -> None:
    server = budgeted.server
    metrics_url = f"{server.base_url}/metrics"
    # The server answered (start_server waited for it) while it preloads: SD1 first, then
    # slow-hub, whose load is now under way and will not end until the hub lets go.
    assert hub.asked.wait(120), server.logs()
    before = scrape(metrics_url)
    assert loads(before, SD1) == 1  # preloaded, before any request
    assert value(before, LOADED) == 1
    with server.client() as client:
        # A job for the engine still loading waits in the queue, not on the inference thread.
        waiting = client.post(
            f"/v1/generation/{SLOW}/text-to-image",
            json=t2i_body(width=320, height=320),
            headers={"Prefer": "respond-async"},
        )
        assert waiting.status_code == 202, waiting.text
        slow_id = waiting.json()["id"]
        image(client, SD1, seed=1)  # the preloaded engine answers meanwhile
        after = scrape(metrics_url)
        assert loads(after, SD1) == 1  # its first image cost no load
        still = client.get(f"/v1/generation/{slow_id}")
        assert still.status_code == 202 and still.json()["status"] == "queued", still.text
        hub.let_go()  # the Hub can't be reached: the load fails, and the job with it
        failed = wait_for(client, slow_id, finished)
        assert failed.status_code == 503, failed.text
        assert failed.json()["name"] == "engine_unavailable"
        assert SLOW in failed.json()["message"]
    assert '"message": "preload failed"' in server.logs()


def test_the_least_recently_used_engine_is_unloaded_under_the_budget(
    budgeted: Deployment,
) -> None:
    server = budgeted.server
    metrics_url = f"{server.base_url}/metrics"
    start = scrape(metrics_url)  # SD1 loaded (preloaded, used by the test before)
    held: list[float] = []
    with server.client() as client:
        for step, engine in enumerate((COPY_A, COPY_B, SD1)):
            image(client, engine, seed=10 + step)
            held.append(value(scrape(metrics_url), LOADED))
    end = scrape(metrics_url)
    # Never more than two pipelines held, the budget.
    assert held == [2, 2, 2]
    # copy-a loaded (2 held); copy-b unloaded SD1, the least recently used; SD1 then loaded
    # again and unloaded copy-a, the least recently used then.
    for engine in (COPY_A, COPY_B, SD1):
        assert loads(end, engine) - loads(start, engine) == 1
    assert unloads(end, SD1) - unloads(start, SD1) == 1
    assert unloads(end, COPY_A) - unloads(start, COPY_A) == 1
    assert unloads(end, COPY_B) - unloads(start, COPY_B) == 0
    assert value(end, "localstability_pipelines_loaded_bytes") > 0
    unloaded = [line for line in server.logs().splitlines() if "pipeline unloaded" in line]
    assert len(unloaded) == 2, unloaded


def test_an_engine_to_preload_that_is_not_served_is_a_configuration_error(
    tiny_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "localstability.toml"
    text = (tiny_dir / "localstability.toml").read_text()
    config.write_text('preload = ["no-such-engine", "' + SD1 + '"]\n' + text)
    result = run_cli("serve", "--config", str(config), check=False)
    assert result.returncode == 2, result.stderr
    assert "configuration: preload: not an enabled engine: no-such-engine" in result.stderr
