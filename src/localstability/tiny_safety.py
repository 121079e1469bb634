"""A tiny random-weight Stable Diffusion safety checker (a TEST FIXTURE, built offline): the
architecture of `CompVis/stable-diffusion-safety-checker` (a CLIP vision tower, its projection
and the concept embeddings) at a few thousand parameters, with its image processor, in the
folder layout that `safety.output_model` takes. It judges nothing; it shows the loading and
scoring path run (`models make-tiny` writes it to `safety-checker/`)."""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32


def build_tiny_safety_checker(dest: Path) -> Path:
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **tower,
            "num_hidden_layers": 1,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            **tower,
            "num_hidden_layers": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    generator = torch.Generator().manual_seed(0)
    model = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        # Thresholds as the real checker's are: a cosine similarity of about a fifth.
        model.concept_embeds_weights.fill_(0.2)
        model.special_care_embeds_weights.fill_(0.2)
    model.save_pretrained(dest)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(dest)
    return dest
