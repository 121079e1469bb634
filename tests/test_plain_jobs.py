"""A job is plain data: serialised to JSON (its input images in an artifact store), it runs
in a fresh Python process from that alone and makes the pixels the in-process run makes for
the same seed. And the artifact store keeps its time to live exactly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localstability.config import load_settings
from localstability.inference.cache import PipelineCache
from localstability.jobs.artifacts import (
    Artifact,
    DiskArtifactStore,
    MemoryArtifactStore,
    get_result,
    input_key,
    result_prefix,
)
from localstability.jobs.base import JobSpec
from localstability.jobs.execute import execute
from localstability.protocol import (
    ImageToImageRequestBody,
    MaskingRequestBody,
    TextToImageRequestBody,
    UpscaleRequestBody,
)
from localstability.service.records import request_summary
from localstability.service.tasks import TaskBuilder, Work
from localstability.testing import cli_env
from tests.helpers import encode, pixels, sample_picture
from tests.test_masking import half_mask

PROMPTS = [{"text": "a lighthouse on a cliff"}, {"text": "fog", "weight": -0.5}]


def requests() -> dict[str, tuple[str, str, Any, dict[str, bytes]]]:
    """Per task: engine, builder method, body, files."""
    picture = encode(sample_picture(128, 192))
    return {
        "text-to-image": (
            "stable-diffusion-v1-6",
            "text_to_image",
            TextToImageRequestBody(
                text_prompts=PROMPTS, steps=10, seed=7, samples=2, width=320, height=320
            ),
            {},
        ),
        "image-to-image": (
            "stable-diffusion-xl-beta-v2-2-2",
            "image_to_image",
            ImageToImageRequestBody(text_prompts=PROMPTS, steps=10, seed=8),
            {"init_image": picture},
        ),
        "masking": (
            "stable-diffusion-512-v2-1",
            "masking",
            MaskingRequestBody(
                text_prompts=PROMPTS, steps=10, seed=9, mask_source="MASK_IMAGE_WHITE"
            ),
            {
                "init_image": encode(sample_picture(512, 512)),
                "mask_image": encode(half_mask(width=512, height=512)),
            },
        ),
        "esrgan upscale": (
            "esrgan-v1-x2plus",
            "upscale",
            UpscaleRequestBody(seed=10),
            {"image": encode(sample_picture(64, 48, mode="RGBA"))},
        ),
        "latent upscale": (
            "stable-diffusion-x4-latent-upscaler",
            "upscale",
            UpscaleRequestBody(text_prompts=PROMPTS, steps=10, seed=11, width=512),
            {"image": encode(sample_picture(64, 64))},
        ),
    }


def queued_job(task: str, settings: Any, store: DiskArtifactStore) -> JobSpec:
    """The job the service would queue for the task's request, its inputs in `store`."""
    engine_id, method, body, files = requests()[task]
    builder = TaskBuilder(settings)
    engine = builder.engine(engine_id)
    prepare = getattr(builder, method)
    work: Work = asyncio.run(
        prepare(engine, body, png_response=False)
        if method == "text_to_image"
        else prepare(engine, body, files, png_response=False)
    )
    generation_id = f"gen-{task.replace(' ', '-')}"
    inputs = {name: input_key("org-1", generation_id, name) for name in work.inputs}
    for name, data in work.inputs.items():
        store.put(inputs[name], data, 600)
    return JobSpec(
        id=generation_id,
        organization_id="org-1",
        user_id="user-1",
        key_id=1,
        engine_id=engine.id,
        run=work.run,
        inputs=inputs,
        cost=work.cost,
        steps=work.steps,
        summary=request_summary(body),
    )


@dataclass
class Runs:
    """Each task's job, as this process ran it, and the store where a fresh process left
    its results."""

    jobs: dict[str, JobSpec]
    here: dict[str, list[Artifact]]
    store: DiskArtifactStore


@pytest.fixture(scope="module")
def runs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    config = tiny_dir / "localstability.toml"
    settings = load_settings(config)
    folder = tmp_path_factory.mktemp("plain-jobs")
    store = DiskArtifactStore(folder / "store")
    jobs = {task: queued_job(task, settings, store) for task in requests()}
    files = []
    for spec in jobs.values():
        path = folder / f"{spec.id}.json"
        path.write_text(spec.to_json())
        json.loads(path.read_text())  # plain JSON, nothing pickled
        assert JobSpec.from_json(path.read_text()) == spec
        files.append(str(path))
    # In this process, as the in-process backend runs them.
    pipelines = PipelineCache.for_settings(settings)
    here = {task: execute(spec, store, pipelines) for task, spec in jobs.items()}
    # In a fresh process, from the files and the store alone.
    command = [sys.executable, "-m", "localstability.jobs.execute", *files]
    command += ["--store", str(folder / "store"), "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=900)
    assert done.returncode == 0, done.stderr
    return Runs(jobs, here, store)


@pytest.mark.parametrize("task", list(requests()))
def test_a_serialised_job_runs_in_a_fresh_process_to_the_same_pixels(task: str, runs: Runs) -> None:
    here = runs.here[task]
    there = get_result(runs.store, result_prefix(*runs.jobs[task].key))
    assert there is not None
    assert len(here) == len(there) >= 1
    assert [(a.seed, a.finish_reason) for a in here] == [(a.seed, a.finish_reason) for a in there]
    for mine, theirs in zip(here, there, strict=True):
        assert np.array_equal(pixels_of(mine.png), pixels_of(theirs.png))


def pixels_of(png: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return pixels(Image.open(BytesIO(png)))


def test_the_memory_store_keeps_a_ttl_exactly() -> None:
    now = [100.0]
    store = MemoryArtifactStore(clock=lambda: now[0])
    store.put("a", b"1", 10)
    store.put("b", b"2", 20)
    now[0] = 109.999
    assert store.get("a") == b"1"
    now[0] = 110.0  # at the moment it expires, not when something else happens
    assert store.get("a") is None
    store.expire("b", 0)
    assert store.get("b") is None
    store.put("c", b"3", 1)
    now[0] = 200.0
    store.put("d", b"4", 1)  # a put sweeps what expired
    assert store.keys() == ["d"]


def test_the_disk_store_keeps_a_ttl_and_survives_a_new_instance(tmp_path: Path) -> None:
    store = DiskArtifactStore(tmp_path)
    store.put("result/org/gen/manifest.json", b"[]", 60)
    store.put("gone", b"x", -1)
    again = DiskArtifactStore(tmp_path)
    assert again.get("result/org/gen/manifest.json") == b"[]"
    assert again.get("gone") is None
    again.expire("result/org/gen/manifest.json", 0)
    assert store.get("result/org/gen/manifest.json") is None
