"""The SD 3.5 and FLUX.1 adapters on their tiny fixtures: prompts encode exactly as the
pipelines' own calls encode them (T5 to its length), the samplers they offer, the family read
from the weights, and the tiny T5 tokenizer built offline."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from localstability.engines import Family
from localstability.inference.families import Role, adapter_for
from localstability.inference.loader import WeightSource, load_pipeline
from localstability.inference.prompts import (
    WeightedPrompt,
    encode_weighted_prompts,
    stack_prompt_embeddings,
)
from localstability.inference.weights import detect_family
from localstability.protocol import Sampler
from localstability.tiny_flow import make_t5_tokenizer

TEXT = "a red house by a lake"
NEGATIVE = "blurry, low quality"
FLUX_ID = "flux-1-schnell"
# Longer than CLIP's 77 tokens: the rest reaches T5 only.
LONG = " ".join(["a lighthouse on a cliff above a stormy sea"] * 20)


@pytest.fixture(scope="module")
def load(tiny_dir: Path) -> Any:
    @functools.cache
    def loaded(family: Family, folder: str) -> Any:
        source = WeightSource(folder, family, str(tiny_dir / folder))
        return load_pipeline(source, "cpu", torch.float32, True)

    return loaded


def assert_same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


def sd3_own(pipe: Any, **call: Any) -> dict[str, Any]:
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds")
    returned = pipe.encode_prompt(
        prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=True, **call
    )
    return dict(zip((*names, "negative_pooled_prompt_embeds"), returned, strict=True))


def test_sd35_encodes_as_its_pipeline_with_t5_to_512(load: Any) -> None:
    pipe = load(Family.SD3, "sd3")
    with torch.inference_mode():
        ours = encode_weighted_prompts(
            pipe,
            [WeightedPrompt(LONG, 1.0), WeightedPrompt(NEGATIVE, -1.0)],
            "cpu",
            family=Family.SD3,
        )
        theirs = sd3_own(pipe, prompt=LONG, negative_prompt=NEGATIVE, max_sequence_length=512)
        assert_same(ours, theirs)
        # No negative prompt: the pipeline's own (the empty prompt).
        alone = stack_prompt_embeddings(
            pipe, [([WeightedPrompt(TEXT, 1.0)], 1)], "cpu", family=Family.SD3
        )
        assert_same(alone, sd3_own(pipe, prompt=TEXT, max_sequence_length=512))
        # 77 CLIP tokens then 512 of T5; the T5 part is not the default 256's.
        assert ours["prompt_embeds"].shape[1] == 77 + 512
        short = sd3_own(pipe, prompt=LONG, max_sequence_length=256)["prompt_embeds"]
        assert not torch.equal(ours["prompt_embeds"][:, : 77 + 256], short)


@pytest.mark.parametrize(("folder", "length"), [("flux", 512), ("flux-schnell", 256)])
def test_flux_encodes_as_its_pipeline_and_adds_no_negative(
    load: Any, folder: str, length: int
) -> None:
    pipe = load(Family.FLUX, folder)
    with torch.inference_mode():
        ours = stack_prompt_embeddings(
            pipe, [([WeightedPrompt(LONG, 1.0)], 2)], "cpu", family=Family.FLUX
        )
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=LONG, prompt_2=None, device="cpu", max_sequence_length=length
        )
    assert sorted(ours) == ["pooled_prompt_embeds", "prompt_embeds"]  # no negative_...
    assert ours["prompt_embeds"].shape[1] == length
    assert torch.equal(ours["prompt_embeds"], torch.cat([embeds] * 2))
    assert torch.equal(ours["pooled_prompt_embeds"], torch.cat([pooled] * 2))
    assert not adapter_for(Family.FLUX).negative_prompts


def test_the_flow_samplers(load: Any) -> None:
    sd3, flux = adapter_for(Family.SD3), adapter_for(Family.FLUX)
    assert list(sd3.samplers) == [Sampler.K_EULER, Sampler.K_HEUN]
    assert list(flux.samplers) == [Sampler.K_EULER]
    pipe = load(Family.SD3, "sd3")
    for role in Role:
        view = sd3.view(pipe, role, None)
        assert view.transformer is pipe.transformer and view.scheduler is not pipe.scheduler
        assert type(view.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
        assert view.scheduler.config.shift == 3.0  # the model's own schedule carries over
    heun = sd3.view(pipe, Role.INPAINT, Sampler.K_HEUN).scheduler
    assert type(heun).__name__ == "FlowMatchHeunDiscreteScheduler"
    dev = flux.view(load(Family.FLUX, "flux"), Role.IMG2IMG, Sampler.K_EULER)
    assert dev.scheduler.config.use_dynamic_shifting


def test_the_family_is_read_from_the_weights(tiny_dir: Path) -> None:
    assert detect_family(str(tiny_dir / "sd3")) == Family.SD3
    assert detect_family(str(tiny_dir / "flux")) == Family.FLUX
    assert detect_family(str(tiny_dir / "flux-schnell")) == Family.FLUX


def test_the_tiny_t5_tokenizer_has_t5s_layout() -> None:
    tokenizer = make_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == 32_100  # 32,000 pieces and 100 sentinels, as T5's
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") >= 32_000
    ids = tokenizer("A photo of a cat").input_ids
    assert ids[-1] == 1 and 2 not in ids  # </s> at the end, nothing unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == "A photo of a cat"
    assert make_t5_tokenizer()("A photo of a cat").input_ids == ids  # deterministic


def test_a_float16_deployment_loads_them_in_bfloat16(tiny_dir: Path) -> None:
    """Their weights overflow in float16; float32 and the other families' float16 are kept."""
    source = WeightSource(FLUX_ID, Family.FLUX, str(tiny_dir / "flux-schnell"))
    pipe = load_pipeline(source, "cpu", torch.float16, True)
    assert pipe.transformer.dtype == pipe.vae.dtype == torch.bfloat16
    view = adapter_for(Family.FLUX).view(pipe, Role.IMG2IMG, None)
    assert view.transformer.dtype == torch.bfloat16
    assert adapter_for(Family.SD3).load_dtype(torch.float32) == torch.float32
    assert adapter_for(Family.SDXL).load_dtype(torch.float16) == torch.float16
