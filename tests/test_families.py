"""The family adapters (localstability.inference.families): each loads its family's tiny model
from a folder, encodes prompts the way the pipeline's own call would, and offers its samplers;
every engines.Family has one, and an unknown family is a clear error."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from localstability import errors
from localstability.engines import CATALOGUE, Family
from localstability.inference.families import (
    FamilyAdapter,
    Role,
    UnknownFamily,
    adapter_for,
    adapters,
)
from localstability.inference.families.upscalers import LATENT_UPSCALER, REAL_ESRGAN
from localstability.inference.loader import WeightSource, load_pipeline
from localstability.inference.prompts import (
    WeightedPrompt,
    encode_weighted_prompts,
    stack_prompt_embeddings,
)
from localstability.protocol import Sampler

# family, tiny model folder (localstability.tiny), the role it loads as
DIFFUSERS_MODELS = [
    (Family.SD1, "sd1", Role.BASE),
    (Family.SD2, "sd2", Role.BASE),
    (Family.SDXL, "sdxl", Role.BASE),
    (Family.SD1, "sd1-inpaint", Role.INPAINT),
    (Family.LATENT_UPSCALER, "sd-x4-upscaler", Role.BASE),
]
IDS = [folder for _, folder, _ in DIFFUSERS_MODELS]

# The names of what diffusers' own `encode_prompt` returns, in its order, per family: the test's
# own record of each pipeline's signature (the code under test must not need it).
ENCODE_PROMPT_RETURNS = {
    Family.SD1: ("prompt_embeds", "negative_prompt_embeds"),
    Family.SD2: ("prompt_embeds", "negative_prompt_embeds"),
    Family.LATENT_UPSCALER: ("prompt_embeds", "negative_prompt_embeds"),
    Family.SDXL: (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ),
}

TEXT = "a red house by a lake"
NEGATIVE = "blurry, low quality"


def source(family: Family, folder: Path, role: str = Role.BASE) -> WeightSource:
    engine_id = next(e.id for e in CATALOGUE.values() if e.family == family)
    return WeightSource(engine_id, family, str(folder), role=role)


@pytest.fixture(scope="module")
def load(tiny_dir: Path) -> Any:
    """The tiny model of a family, loaded once by the adapter-driven loader (CPU, float32)."""

    @functools.cache
    def loaded(family: Family, folder: str, role: str = Role.BASE) -> Any:
        return load_pipeline(source(family, tiny_dir / folder, role), "cpu", torch.float32, True)

    return loaded


def pipeline_own_encoding(pipe: Any, family: Family, **call: Any) -> dict[str, Any]:
    """What the pipeline's own call would use: its encode_prompt with classifier-free
    guidance, by the names of its call's keyword arguments."""
    returned = pipe.encode_prompt(
        device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **call
    )
    return dict(zip(ENCODE_PROMPT_RETURNS[family], returned, strict=True))


def assert_same_tensors(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


# -- finding the adapter -------------------------------------------------------------------------


def test_every_family_has_an_adapter() -> None:
    assert set(adapters()) == set(Family)
    for family in Family:
        adapter = adapter_for(family)
        assert isinstance(adapter, FamilyAdapter)
        assert family in adapter.families


def test_sd_1_and_2_share_one_adapter_and_sdxl_has_its_own() -> None:
    assert adapter_for(Family.SD1) is adapter_for(Family.SD2)
    assert adapter_for(Family.SDXL) is not adapter_for(Family.SD1)


def test_an_unknown_family_is_a_clear_error(tiny_dir: Path) -> None:
    with pytest.raises(UnknownFamily) as raised:
        adapter_for("sd9")  # type: ignore[arg-type]
    message = str(raised.value)
    assert "no adapter for model family 'sd9'" in message
    for family in Family:
        assert family.value in message  # it says which families there are
    # The loader reports it as the engine being unavailable, like any load failure.
    unknown = WeightSource("stable-diffusion-v1-6", "sd9", str(tiny_dir / "sd1"))  # type: ignore[arg-type]
    with pytest.raises(errors.EngineUnavailable, match="no adapter for model family 'sd9'"):
        load_pipeline(unknown, "cpu", torch.float32, True)


# -- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "folder", "role"), DIFFUSERS_MODELS, ids=IDS)
def test_loads_the_tiny_model_of_its_family(
    load: Any, tiny_dir: Path, family: Family, folder: str, role: Role
) -> None:
    pipe = load(family, folder, role)
    pipeline_class = adapter_for(family).pipeline_class(role)
    assert type(pipe) is pipeline_class
    saved = json.loads((tiny_dir / folder / "model_index.json").read_text())["_class_name"]
    assert pipeline_class.__name__ == saved


def test_esrgan_has_no_diffusers_pipeline_but_loads_with_spandrel(tiny_dir: Path) -> None:
    weights = tiny_dir / "esrgan" / "tiny-esrgan-x4.safetensors"
    with pytest.raises(errors.EngineUnavailable, match="has no base pipeline"):
        load_pipeline(source(Family.ESRGAN, weights), "cpu", torch.float32, True)
    model = REAL_ESRGAN.load_model(weights, "cpu")
    assert model.scale == 4
    tiles: list[tuple[int, int]] = []
    image = Image.new("RGB", (24, 16), (200, 40, 40))
    result = REAL_ESRGAN.upscale(
        model, image, 60, 40, lambda done, total: tiles.append((done, total))
    )
    assert result.size == (60, 40)
    assert tiles and tiles[-1][0] == tiles[-1][1]


# -- prompts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "folder", "role"), DIFFUSERS_MODELS, ids=IDS)
def test_a_prompt_and_a_negative_encode_as_the_pipeline_encodes_them(
    load: Any, family: Family, folder: str, role: Role
) -> None:
    pipe = load(family, folder, role)
    prompts = [WeightedPrompt(TEXT, 1.0), WeightedPrompt(NEGATIVE, -1.0)]
    with torch.inference_mode():
        ours = encode_weighted_prompts(pipe, prompts, "cpu", family=family)
        theirs = pipeline_own_encoding(pipe, family, prompt=TEXT, negative_prompt=NEGATIVE)
    assert_same_tensors(ours, theirs)


@pytest.mark.parametrize(("family", "folder", "role"), DIFFUSERS_MODELS, ids=IDS)
def test_no_negative_prompt_becomes_what_the_pipeline_uses(
    load: Any, family: Family, folder: str, role: Role
) -> None:
    pipe = load(family, folder, role)
    with torch.inference_mode():
        ours = stack_prompt_embeddings(
            pipe, [([WeightedPrompt(TEXT, 1.0)], 1)], "cpu", family=family
        )
        theirs = pipeline_own_encoding(pipe, family, prompt=TEXT)
    assert_same_tensors(ours, theirs)


@pytest.mark.parametrize("zeros", [True, False])
def test_sdxl_no_negative_follows_the_models_force_zeros_setting(load: Any, zeros: bool) -> None:
    base = load(Family.SDXL, "sdxl")
    pipe = type(base).from_pipe(base, force_zeros_for_empty_prompt=zeros)
    with torch.inference_mode():
        ours = stack_prompt_embeddings(
            pipe, [([WeightedPrompt(TEXT, 1.0)], 1)], "cpu", family=Family.SDXL
        )
        theirs = pipeline_own_encoding(pipe, Family.SDXL, prompt=TEXT)
    assert_same_tensors(ours, theirs)
    assert bool(torch.count_nonzero(ours["negative_prompt_embeds"])) is not zeros


@pytest.mark.parametrize(("family", "folder", "role"), DIFFUSERS_MODELS, ids=IDS)
def test_prompts_blend_by_weight(load: Any, family: Family, folder: str, role: Role) -> None:
    pipe = load(family, folder, role)
    other = "a castle in the snow"
    prompts = [WeightedPrompt(TEXT, 3.0), WeightedPrompt(other, 1.0)]
    with torch.inference_mode():
        ours = encode_weighted_prompts(pipe, prompts, "cpu", family=family)
        first = pipeline_own_encoding(pipe, family, prompt=TEXT)
        second = pipeline_own_encoding(pipe, family, prompt=other)
    positive = [name for name in first if not name.startswith("negative_")]
    expected = {name: first[name] * 0.75 + second[name] * 0.25 for name in positive}
    assert_same_tensors(ours, expected)


def test_rows_stack_per_sample(load: Any) -> None:
    pipe = load(Family.SDXL, "sdxl")
    requests = [([WeightedPrompt(TEXT, 1.0)], 2), ([WeightedPrompt(NEGATIVE, 1.0)], 1)]
    with torch.inference_mode():
        stacked = stack_prompt_embeddings(pipe, requests, "cpu", family=Family.SDXL)
        first = pipeline_own_encoding(pipe, Family.SDXL, prompt=TEXT)
        last = pipeline_own_encoding(pipe, Family.SDXL, prompt=NEGATIVE)
    for name, tensor in stacked.items():
        assert tensor.shape[0] == 3
        assert torch.equal(tensor[0], first[name][0]) and torch.equal(tensor[1], first[name][0])
        assert torch.equal(tensor[2], last[name][0])


def test_esrgan_takes_no_prompt() -> None:
    with pytest.raises(NotImplementedError, match="no text prompt"):
        encode_weighted_prompts(None, [WeightedPrompt(TEXT, 1.0)], "cpu", family=Family.ESRGAN)


# -- pipelines per role and samplers ---------------------------------------------------------


@pytest.mark.parametrize(("family", "folder", "loaded_as"), DIFFUSERS_MODELS, ids=IDS)
def test_views_share_the_models_and_leave_the_pipeline_alone(
    load: Any, family: Family, folder: str, loaded_as: Role
) -> None:
    pipe = load(family, folder, loaded_as)
    adapter = adapter_for(family)
    scheduler = pipe.scheduler
    roles = [loaded_as] if loaded_as == Role.INPAINT else list(adapter.pipelines)
    for role in roles:
        view = adapter.view(pipe, role, None)
        assert type(view) is adapter.pipeline_class(role)
        assert view.unet is pipe.unet and view.vae is pipe.vae
        assert view.scheduler is not scheduler
        assert pipe.scheduler is scheduler


def test_sd_and_sdxl_offer_every_sampler(load: Any) -> None:
    for family, folder in [(Family.SD1, "sd1"), (Family.SDXL, "sdxl")]:
        adapter = adapter_for(family)
        assert set(adapter.samplers) == set(Sampler)
        pipe = load(family, folder)
        assert adapter.default_sampler == Sampler.K_DPMPP_2M
        default = adapter.view(pipe, Role.BASE, None).scheduler
        assert type(default).__name__ == "DPMSolverMultistepScheduler"
        for sampler, (class_name, _) in adapter.samplers.items():
            assert type(adapter.view(pipe, Role.IMG2IMG, sampler).scheduler).__name__ == class_name


def test_the_latent_upscaler_runs_its_own_scheduler(load: Any) -> None:
    pipe = load(Family.LATENT_UPSCALER, "sd-x4-upscaler")
    assert dict(LATENT_UPSCALER.samplers) == {}
    view = LATENT_UPSCALER.view(pipe, Role.BASE, None)
    assert type(view.scheduler) is type(pipe.scheduler)
    assert view.scheduler is not pipe.scheduler
    with pytest.raises(errors.BadRequest, match="sampler"):
        LATENT_UPSCALER.view(pipe, Role.BASE, Sampler.K_EULER)
    with pytest.raises(errors.BadRequest, match="sampler"):
        REAL_ESRGAN.scheduler(pipe, None)


def test_the_latent_upscaler_input_is_a_quarter_rounded_up_to_8() -> None:
    assert LATENT_UPSCALER.input_size(1024, 600) == (256, 152)
    assert LATENT_UPSCALER.input_size(65, 64) == (24, 16)


@pytest.mark.parametrize(
    ("family", "folder"), [(Family.SD1, "sd1"), (Family.LATENT_UPSCALER, "sd-x4-upscaler")]
)
def test_a_view_keeps_the_pipelines_dtype(tiny_dir: Path, family: Family, folder: str) -> None:
    """from_pipe casts the shared models to the dtype it is given (float32 when none is)."""
    pipe = load_pipeline(source(family, tiny_dir / folder), "cpu", torch.bfloat16, True)
    view = adapter_for(family).view(pipe, Role.BASE, None)
    assert pipe.unet.dtype == view.unet.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.bfloat16


def test_the_pipeline_is_not_probed_for_its_family() -> None:
    """The family comes from engines.Family, never from a pipeline's attributes."""
    inference = Path(__file__).resolve().parents[1] / "src" / "localstability" / "inference"
    for path in inference.rglob("*.py"):
        assert "hasattr(" not in path.read_text(), path
