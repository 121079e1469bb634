"""Unit tests where the logic is dense: size rules, samplers, seeds, Accept, prompts, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from localstability import errors
from localstability.api.deps import wants_png
from localstability.config import load_settings
from localstability.engines import CATALOGUE, SDXL_V1_SIZES, get_engine
from localstability.inference.prompts import WeightedPrompt
from localstability.inference.schedulers import SAMPLER_SCHEDULERS, make_scheduler
from localstability.protocol import Sampler, StylePreset, TextPrompt
from localstability.service.prompts import weighted_prompts
from localstability.service.seeds import sample_seeds
from localstability.styles import STYLE_TEMPLATES


def test_sdxl_v1_accepts_exactly_the_nine_sizes() -> None:
    engine = get_engine("stable-diffusion-xl-1024-v1-0")
    accepted = {
        (w, h)
        for w in range(128, 2049, 64)
        for h in range(128, 2049, 64)
        if not _raises(engine.check_size, w, h)
    }
    assert accepted == set(SDXL_V1_SIZES)


def test_sdxl_beta_bounds() -> None:
    engine = get_engine("stable-diffusion-xl-beta-v2-2-2")
    for ok in [(128, 128), (512, 512), (512, 896), (896, 512), (128, 896)]:
        engine.check_size(*ok)
    for bad in [(576, 576), (960, 512), (512, 960)]:
        with pytest.raises(errors.InvalidSdxlV222Dimensions):
            engine.check_size(*bad)


def test_sd21_pixel_count_bounds() -> None:
    engine = get_engine("stable-diffusion-512-v2-1")
    engine.check_size(512, 512)
    engine.check_size(1024, 1024)
    engine.check_size(256, 1024)
    with pytest.raises(errors.InvalidPixelCount):
        engine.check_size(448, 512)
    with pytest.raises(errors.InvalidPixelCount):
        engine.check_size(1024, 1088)


def test_sd16_side_bounds() -> None:
    engine = get_engine("stable-diffusion-v1-6")
    engine.check_size(320, 1536)
    with pytest.raises(errors.InvalidHeightOrWidth):
        engine.check_size(256, 512)


def test_catalogue_has_the_six_spec_engines_and_ours() -> None:
    assert set(CATALOGUE) == {
        "localstability-shapes-v1",
        "stable-diffusion-xl-1024-v1-0",
        "stable-diffusion-v1-6",
        "stable-diffusion-xl-beta-v2-2-2",
        "stable-diffusion-512-v2-1",
        "esrgan-v1-x2plus",
        "stable-diffusion-x4-latent-upscaler",
        # The flow-matching families, beyond the spec (docs/models.md).
        "stable-diffusion-3-5-large",
        "stable-diffusion-3-5-large-turbo",
        "stable-diffusion-3-5-medium",
        "flux-1-schnell",
        "flux-1-dev",
    }


def test_shapes_side_bounds() -> None:
    engine = get_engine("localstability-shapes-v1")
    engine.check_size(128, 512)
    with pytest.raises(errors.InvalidHeightOrWidth):
        engine.check_size(576, 128)


def test_allowed_sizes_enumerates_what_check_size_accepts() -> None:
    """Multiples of 64 up to `largest`, widths ascending then heights; none without a rule."""
    assert get_engine("stable-diffusion-xl-1024-v1-0").allowed_sizes() == sorted(SDXL_V1_SIZES)
    sides = range(128, 513, 64)
    shapes = get_engine("localstability-shapes-v1")
    assert shapes.allowed_sizes() == [(w, h) for w in sides for h in sides]
    assert shapes.allowed_sizes(largest=256) == [(128, 128), (128, 192), (128, 256),
                                                 (192, 128), (192, 192), (192, 256),
                                                 (256, 128), (256, 192), (256, 256)]  # fmt: skip
    sd21 = get_engine("stable-diffusion-512-v2-1").allowed_sizes()
    assert all(262_144 <= w * h <= 1_048_576 for w, h in sd21)
    assert (128, 2048) in sd21 and (2048, 128) in sd21 and (1024, 1024) in sd21
    assert (448, 512) not in sd21 and (1024, 1088) not in sd21
    assert len(sd21) == len(set(sd21))
    assert get_engine("esrgan-v1-x2plus").allowed_sizes() == []
    assert get_engine("stable-diffusion-x4-latent-upscaler").allowed_sizes() == []


def test_only_real_esrgan_takes_no_prompts() -> None:
    assert [e.id for e in CATALOGUE.values() if not e.takes_prompts] == ["esrgan-v1-x2plus"]


def _raises(check: object, width: int, height: int) -> bool:
    try:
        check(width, height)  # type: ignore[operator]
    except errors.ApiError:
        return True
    return False


SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "steps_offset": 1,
}


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_maps_to_a_scheduler_keeping_the_model_config(sampler: Sampler) -> None:
    scheduler = make_scheduler(sampler, SD_SCHEDULER_CONFIG)
    assert type(scheduler).__name__ == SAMPLER_SCHEDULERS[sampler][0]
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_default_sampler_is_dpmpp_2m() -> None:
    assert type(make_scheduler(None, SD_SCHEDULER_CONFIG)).__name__ == (
        "DPMSolverMultistepScheduler"
    )


def test_seeds() -> None:
    assert sample_seeds(7, 3) == [7, 8, 9]
    assert sample_seeds(4294967295, 2) == [4294967295, 1]
    random = sample_seeds(0, 10)
    assert all(1 <= s <= 4294967295 for s in random)
    assert len(set(random)) > 1


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("image/png", True),
        ("IMAGE/PNG", True),
        ("image/png, application/json;q=0.5", True),
        ("application/json, image/png", False),
        ("application/json;q=0.1, image/png", True),
        ("text/html", False),
        ("image/png;q=bad, application/json", False),
    ],
)
def test_accept_negotiation(accept: str | None, png: bool) -> None:
    assert wants_png(accept) is png


def test_weighted_prompts_with_style() -> None:
    prompts = weighted_prompts(
        [TextPrompt(text="a cat", weight=1), TextPrompt(text="dog", weight=-0.5)],
        StylePreset.PIXEL_ART,
    )
    template = STYLE_TEMPLATES[StylePreset.PIXEL_ART]
    assert prompts == [
        WeightedPrompt(template.apply("a cat"), 1),
        WeightedPrompt("dog", -0.5),
        WeightedPrompt(template.negative_prompt, -1.0),
    ]
    assert "a cat" in prompts[0].text


def test_every_style_has_a_template_with_the_prompt_slot() -> None:
    assert set(STYLE_TEMPLATES) == set(StylePreset)
    for template in STYLE_TEMPLATES.values():
        assert template.prompt.count("{prompt}") == 1
        assert template.negative_prompt


def test_zero_weight_prompts_are_dropped_and_one_positive_is_required() -> None:
    assert weighted_prompts([TextPrompt(text="a"), TextPrompt(text="b", weight=0)], None) == [
        WeightedPrompt("a", 1.0)
    ]
    with pytest.raises(errors.BadRequest):
        weighted_prompts([TextPrompt(text="a", weight=0)], None)


def test_config_file_paths_and_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "localstability.toml"
    config.parent.mkdir()
    config.write_text(
        'data_dir = "state"\nport = 9000\n'
        '[engines.stable-diffusion-v1-6]\nsource = "./models/sd1"\n'
        '[engines.stable-diffusion-512-v2-1]\nsource = "org/repo"\nvariant = "fp16"\n'
    )
    monkeypatch.setenv("LOCALSTABILITY_PORT", "9100")
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.data_dir == (config.parent / "state").resolve()
    assert settings.engine_config("stable-diffusion-v1-6").source == str(
        (config.parent / "models" / "sd1").resolve()
    )
    assert settings.engine_config("stable-diffusion-512-v2-1").variant == "fp16"
    assert settings.sqlalchemy_url.endswith("state/localstability.db")
    monkeypatch.setenv("LOCALSTABILITY_CONFIG", str(config))
    assert load_settings().config_file == config.resolve()
