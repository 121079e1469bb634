"""Content safety through the HTTP surface, as the hosted API behaves (spec section 7).

The test deployments run with both filters on (conftest.SAFETY_ENV): the prompt filter blocks
the shipped word list, and the output filter is NudeNet (the real detector from its wheel)
flagging a woman's face, so scikit-image's public-domain astronaut portrait shows it. A second
deployment of this module runs the Stable Diffusion safety checker (the tiny random-weight one
that `models make-tiny` builds) at threshold 0, where it flags every image: the real clients'
text-to-image then gets a CONTENT_FILTERED artifact.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from localstability.inference.diffusion import GeneratedImage
from localstability.inference.safety import NudeNet, OutputFilter, screen
from localstability.safety.settings import OutputClassifier, SafetySettings
from localstability.safety.words import DenyList, canonical_tokens, deny_list
from tests.conftest import ADMIN_KEY, Deployment, log_records, start_deployment
from tests.helpers import artifact_image, encode, png_image, sample_picture, skimage_photo
from tests.test_accounts_engines import assert_envelope
from tests.test_clients import modelfusion_for, probe_for
from tests.test_jobs import balance, client_for
from tests.test_mcp import envelope, http_session

SHAPES = "/v1/generation/localstability-shapes-v1/text-to-image"
SD1 = "stable-diffusion-v1-6"
I2I = f"/v1/generation/{SD1}/image-to-image"
HOSTED_MESSAGE = "One or more of the prompts contains filtered words"


def astronaut(size: int = 256) -> Image.Image:
    return Image.open(skimage_photo("astronaut.png")).convert("RGB").resize((size, size))


def sharpness(image: Image.Image) -> float:
    """The mean difference between neighbouring pixels: a photo's edges, gone once blurred."""
    values = np.asarray(image.convert("RGB"), dtype=np.float32)
    return float(np.abs(np.diff(values, axis=0)).mean() + np.abs(np.diff(values, axis=1)).mean())


def admin(deployment: Deployment) -> httpx.Client:
    return httpx.Client(
        base_url=deployment.server.base_url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )


def organization_of(client: httpx.Client) -> str:
    account = client.get("/v1/user/account").json()
    org: str = account["organizations"][0]["id"]
    return org


# -- the word list -----------------------------------------------------------------------------


def test_the_word_list_matches_whole_words_through_disguises() -> None:
    words = deny_list(builtin=True)
    for text in ("a NUDE figure", "s3x", "p.o.r.n", "s e x", "$lut", "hen\u200btai", "nudes"):
        assert words.find(text) is not None, text
    assert words.find("a n\u0430ked man") == "naked"  # a Cyrillic a
    for text in ("classic glass", "an assassin in Sussex", "analysis", "a cocktail", "4k"):
        assert words.find(text) is None, text
    own = DenyList(["red panda", "kraken"])
    assert own.find("a RED  panda!") == "red panda" and own.find("a red fox") is None
    assert own.find("krakens") == "kraken"
    assert canonical_tokens("L1ke th1s") == ["iike", "this"]


def test_an_unknown_output_label_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="FACE is not a label of nudenet"):
        SafetySettings(output_filter=OutputClassifier.NUDENET, output_labels=["FACE"])
    checker = SafetySettings(output_filter=OutputClassifier.SAFETY_CHECKER)
    assert checker.labels() == ("nsfw",)


# -- the prompt filter -------------------------------------------------------------------------


def test_blocked_prompts_are_refused_uncharged(sqlite_deployment: Deployment) -> None:
    key = sqlite_deployment.new_key("safety-blocked@example.com", 10)
    with client_for(sqlite_deployment, key) as client:
        before = balance(client)
        for prompts in (
            [{"text": "a NUDE figure"}],
            [{"text": "a red circle"}, {"text": "s3x", "weight": -1}],  # a negative prompt
            [{"text": "a red circle"}, {"text": "p.o.r.n", "weight": 0.5}],
        ):
            body = assert_envelope(
                client.post(SHAPES, json={"text_prompts": prompts}), 400, "invalid_prompts"
            )
            assert body["message"] == HOSTED_MESSAGE
        multipart = client.post(
            I2I,
            data={"text_prompts[0][text]": "a naked man", "steps": "10"},
            files={"init_image": ("a.png", encode(sample_picture(256, 256)))},
        )
        assert assert_envelope(multipart, 400, "invalid_prompts")["message"] == HOSTED_MESSAGE
        assert balance(client) == before
        org = organization_of(client)
    with admin(sqlite_deployment) as http:
        records = http.get(f"/admin/v1/organizations/{org}/generations").json()
    assert records == []  # no generation was recorded, nothing was held
    with client_for(sqlite_deployment, key) as client:
        passed = client.post(SHAPES, json={"text_prompts": [{"text": "a classic glass"}]})
        assert passed.status_code == 200, passed.text


def test_an_organization_chooses_warn_or_off(sqlite_deployment: Deployment) -> None:
    key = sqlite_deployment.new_key("safety-warn@example.com", 10)
    nude = {"text_prompts": [{"text": "a nude study"}]}
    with client_for(sqlite_deployment, key) as client, admin(sqlite_deployment) as http:
        org = organization_of(client)
        changed = http.patch(f"/admin/v1/organizations/{org}", json={"prompt_filter": "warn"})
        assert changed.status_code == 200 and changed.json()["prompt_filter"] == "warn"
        warned = client.post(SHAPES, json=nude)
        assert warned.status_code == 200, warned.text
        logged = [r for r in log_records(sqlite_deployment.server) if r.get("organization") == org]
        [record] = [r for r in logged if r.get("message") == "prompt filtered"]
        assert record["mode"] == "warn" and record["match"] == "nude"
        assert "a nude study" not in str(record)  # the match, never the prompt
        metrics = client.get("/metrics").text
        assert 'localstability_prompts_filtered_total{mode="warn"}' in metrics

        sqlite_deployment.admin("orgs", "prompt-filter", "--org", org, "off")
        assert client.post(SHAPES, json=nude).status_code == 200
        sqlite_deployment.admin("orgs", "prompt-filter", "--org", org, "default")
        assert_envelope(client.post(SHAPES, json=nude), 400, "invalid_prompts")
        bad = http.patch(f"/admin/v1/organizations/{org}", json={"prompt_filter": "maybe"})
        assert_envelope(bad, 400, "bad_request")


def test_every_topology_blocks(any_client: httpx.Client) -> None:
    """The embedded server and a replica of the Celery deployment answer alike."""
    blocked = any_client.post(SHAPES, json={"text_prompts": [{"text": "NSFW art"}]})
    assert assert_envelope(blocked, 400, "invalid_prompts")["message"] == HOSTED_MESSAGE


def test_mcp_tools_refuse_blocked_prompts(mcp_deployment: Deployment) -> None:
    arguments = {"engine_id": "localstability-shapes-v1", "prompt": "a red circle"}

    async def scenario() -> list[Any]:
        async with http_session(mcp_deployment, mcp_deployment.server.key) as session:
            return [
                await session.call_tool(
                    "generate_image_from_text", {**arguments, "prompt": "xxx hentai"}
                ),
                await session.call_tool(
                    "generate_image_from_text", {**arguments, "negative_prompt": "nudity"}
                ),
            ]

    for result in asyncio.run(scenario()):
        assert envelope(result, "invalid_prompts")["message"] == HOSTED_MESSAGE


def test_the_operator_replaces_the_list_and_adds_a_classifier(operator: Deployment) -> None:
    with operator.server.client() as client:
        for text in ("a KRAKEN", "two sea serpents", "A LOUD RED CIRCLE"):
            blocked = client.post(SHAPES, json={"text_prompts": [{"text": text}]})
            assert assert_envelope(blocked, 400, "invalid_prompts")["message"] == HOSTED_MESSAGE
        # The shipped list is off; a few capitals are under the classifier's threshold.
        for text in ("a nude study", "a Red Circle"):
            passed = client.post(SHAPES, json={"text_prompts": [{"text": text}]})
            assert passed.status_code == 200, passed.text
    logged = [r for r in log_records(operator.server) if r.get("message") == "prompt filtered"]
    assert [r["match"] for r in logged] == ["kraken", "sea serpent", "(prompt_classifier)"]


# -- the output filter -------------------------------------------------------------------------


def test_only_the_flagged_images_are_blurred() -> None:
    """NudeNet from its wheel, offline: the portrait is blurred past recognition (NudeNet no
    longer finds the face), keeps its seed and says why; the drawing beside it is untouched."""
    spec = OutputFilter(OutputClassifier.NUDENET, ("FACE_FEMALE",), 0.5)
    detector = NudeNet(None)
    photo, drawing = astronaut(512), sample_picture(512, 512)
    flagged, kept = screen(
        [GeneratedImage(photo, 11, False), GeneratedImage(drawing, 12, False)], spec, detector
    )
    assert flagged.nsfw and flagged.seed == 11
    assert flagged.filtered_by is not None and flagged.filtered_by.startswith("nudenet: FACE_")
    assert detector.scores([flagged.image]) == [{}]
    assert sharpness(flagged.image) < sharpness(photo) / 10
    assert flagged.image.size == photo.size
    assert kept == GeneratedImage(drawing, 12, False)


def keeping(image: Image.Image, **fields: str) -> dict[str, Any]:
    """An image-to-image request that keeps 95 % of `image` (a face stays a face)."""
    data = {"text_prompts[0][text]": "a portrait", "image_strength": "0.95", "steps": "10"}
    return {"data": {**data, **fields}, "files": {"init_image": ("a.png", encode(image))}}


def test_a_flagged_image_comes_back_blurred(any_client: httpx.Client) -> None:
    """On the embedded server and on the Celery workers alike, in JSON and as a PNG."""
    answer = any_client.post(I2I, **keeping(astronaut(320), seed="5"))
    assert answer.status_code == 200, answer.text
    [artifact] = answer.json()["artifacts"]
    assert (artifact["finishReason"], artifact["seed"]) == ("CONTENT_FILTERED", 5)
    image = artifact_image(artifact)
    assert image.size == (320, 320) and sharpness(image) < sharpness(astronaut(320)) / 10

    as_png = any_client.post(I2I, headers={"Accept": "image/png"}, **keeping(astronaut(320)))
    assert as_png.status_code == 200
    assert as_png.headers["Finish-Reason"] == "CONTENT_FILTERED"
    assert png_image(as_png.content).size == (320, 320)

    drawing = any_client.post(I2I, **keeping(sample_picture(320, 320)))
    assert drawing.json()["artifacts"][0]["finishReason"] == "SUCCESS"


def test_filtered_images_are_charged_and_recorded(sqlite_deployment: Deployment) -> None:
    key = sqlite_deployment.new_key("safety-charged@example.com", 10)
    with client_for(sqlite_deployment, key) as client:
        before = balance(client)
        answer = client.post(I2I, **keeping(astronaut(320), samples="2", seed="40"))
        assert answer.status_code == 200, answer.text
        artifacts = answer.json()["artifacts"]
        assert [a["finishReason"] for a in artifacts] == ["CONTENT_FILTERED"] * 2
        assert [a["seed"] for a in artifacts] == [40, 41]
        assert balance(client) < before  # billed, as the hosted API bills it
        org, generation_id = organization_of(client), answer.headers["Generation-Id"]
    with admin(sqlite_deployment) as http:
        records = http.get(f"/admin/v1/organizations/{org}/generations").json()
    [record] = [r for r in records if r["id"] == generation_id]
    assert record["status"] == "succeeded" and record["credits"] > 0
    assert record["finish_reasons"] == ["CONTENT_FILTERED"] * 2
    assert all(found.startswith("nudenet: FACE_FEMALE") for found in record["content_filter"])


# -- the safety checker, and the real clients ----------------------------------------------------


@pytest.fixture(scope="module")
def checker(
    request: pytest.FixtureRequest, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """A deployment whose output filter is the tiny safety checker at threshold 0 (every
    image flagged)."""
    return start_deployment(
        tiny_dir,
        tmp_path_factory.mktemp("checker"),
        "sqlite",
        request,
        LOCALSTABILITY_SAFETY__OUTPUT_FILTER="safety-checker",
        LOCALSTABILITY_SAFETY__OUTPUT_MODEL=str(tiny_dir / "safety-checker"),
        LOCALSTABILITY_SAFETY__OUTPUT_THRESHOLD="0",
        LOCALSTABILITY_SAFETY__OUTPUT_LABELS='["nsfw", "special"]',
    )


def test_the_safety_checker_flags_text_to_image(checker: Deployment) -> None:
    with checker.server.client() as client:
        answer = client.post(
            f"/v1/generation/{SD1}/text-to-image",
            json={"text_prompts": [{"text": "a lighthouse"}], "steps": 10, "samples": 2, "seed": 3},
        )
    assert answer.status_code == 200, answer.text
    artifacts = answer.json()["artifacts"]
    assert [(a["finishReason"], a["seed"]) for a in artifacts] == [
        ("CONTENT_FILTERED", 3),
        ("CONTENT_FILTERED", 4),
    ]
    for artifact in artifacts:
        assert png_image(base64.b64decode(artifact["base64"])).size == (512, 512)


def test_the_real_clients_accept_content_filtered(checker: Deployment) -> None:
    js = modelfusion_for(checker.server)(SD1, steps=10, seed=8, width=512, height=512)
    assert js["ok"] and js["finish_reason"] == "CONTENT_FILTERED", js
    python = probe_for(checker.server)("text-to-image", engine=SD1, prompt="a hill", steps=10)
    assert [a["finish_reason"] for a in python["artifacts"]] == ["CONTENT_FILTERED"], python
