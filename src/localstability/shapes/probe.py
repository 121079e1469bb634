"""Can a text encoder and UNet learn the place words at all? A short, focused training probe.

The weights shipped until 2026-11-27 ignored the place words: their first step's layout
came from the starting noise. One explanation is the noise schedule (SD's noisiest step
keeps a trace of the picture, so training rewards reading the place from the input). This
probe removes that explanation: it trains a text encoder and UNet of the shapes model from
nothing on the noisiest step alone, with pure noise as the input and the clean latents as
the target, so that the caption is the only thing that tells where the shape goes (the
best answer is the caption's mean picture: its background, and a blob of its colour at its
place). Every `--every` steps it measures the loss and how far the nine place words spread
the predicted shape (`evaluate.place_spread`; the grid's own spread is 34.34 px).

Variants (`--variants`):

- `shipped`: the recipe's text encoder and UNet, learning together from nothing;
- `text-init`: the same with the token table drawn 15 times wider (std 0.3 instead of
  CLIP's 0.02), so the place words' keys differ from the first step;
- `deep`: a fourth UNet level (2x2 latents), where every cell is a corner and zero padding
  tells each its place;
- `finetune`: the text encoder and UNet of `--model` (the shipped model by default), which
  already draw shapes and colours (the start of a fine-tune, as SD 2.1 was taken to zero
  terminal SNR);
- `pretrained-text`: the text encoder first trained alone to name each attribute of the
  captions (`train.pretrain_text_encoder`), then frozen while the UNet learns;
- `short`: captions padded to 16 tokens instead of CLIP's 77 (the longest caption takes 14),
  so the place words are not two keys among 77 that cross-attention spreads itself over.

    python -m localstability.shapes.probe [--variants shipped,text-init] [--steps 300]
        [--json FILE] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from localstability.shapes import train
from localstability.shapes.evaluate import grid_spread, place_spread

VARIANTS = ("shipped", "text-init", "deep", "short", "finetune", "pretrained-text")
TEXT_STEPS = 300  # of the text encoder's pretraining, for `pretrained-text`
SHORT_LENGTH = 16


def build(
    variant: str, recipe: train.Recipe, text_steps: int = TEXT_STEPS, model: Path | None = None
) -> tuple[Any, Any, Any]:
    """The (text encoder, UNet, tokenizer) of a variant, freshly initialised (`finetune`:
    loaded from the diffusers folder `model`, the shipped one by default)."""
    from localstability.tiny import CLIP_EOS_TOKEN, make_clip_tokenizer

    tokenizer = make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN)
    if variant == "finetune":
        import torch
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        from localstability.engines import shapes_model_dir

        folder = model or shapes_model_dir()
        return (
            CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32),
            UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32),
            tokenizer,
        )
    if variant == "short":
        tokenizer.model_max_length = SHORT_LENGTH
    if variant == "deep":
        recipe = replace(recipe, unet_blocks=(*recipe.unet_blocks, recipe.unet_blocks[-1]))
    if variant == "pretrained-text":
        text_encoder = train.pretrain_text_encoder(replace(recipe, text_steps=text_steps), "cpu")
    else:
        text_encoder = train.build_text_encoder(recipe)
    if variant == "text-init":
        text_encoder.get_input_embeddings().weight.data.normal_(0, 0.3)
    elif variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    return text_encoder, train.build_unet(recipe), tokenizer


def run(
    variant: str,
    data: train.Dataset,
    vae: Any,
    steps: int,
    every: int,
    device: str = "cpu",
    report: Callable[[dict[str, Any]], None] = lambda result: None,
    seed: int = 0,
    model: Path | None = None,
) -> dict[str, Any]:
    """Train one variant on the noisiest step alone; its loss and place spread over time.

    `report` gets the result so far after each measurement (a stopped run keeps them)."""
    import torch

    recipe = train.Recipe()
    torch.manual_seed(seed)
    text_encoder, unet, tokenizer = build(variant, recipe, model=model)
    text_encoder, unet = text_encoder.to(device), unet.to(device)
    params = [p for p in (*text_encoder.parameters(), *unet.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    noisiest = torch.tensor(999, device=device)
    rng = random.Random(seed)

    def predict(noise: Any, captions: list[str]) -> Any:
        hidden = text_encoder(train._tokenize(tokenizer, captions, device)).last_hidden_state
        return unet(noise.to(device), noisiest, hidden).sample

    progress = train.Progress(variant, steps, every)
    trace: list[dict[str, float]] = []
    result: dict[str, Any] = {
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "trace": trace,
    }
    started = time.monotonic()
    losses: list[float] = []
    for step in range(steps):
        index = [rng.randrange(len(data.scenes)) for _ in range(recipe.batch)]
        captions = [
            "" if rng.random() < recipe.empty_caption else train.scenes.training_caption(s, rng)
            for s in (data.scenes[i] for i in index)
        ]
        clean = data.latents[index]
        loss = ((predict(torch.randn_like(clean), captions) - clean) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.step(step + 1, loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            text_encoder.eval()
            unet.eval()
            spread = place_spread(predict, vae)
            text_encoder.train()
            unet.train()
            trace.append(
                {
                    "step": step + 1,
                    "loss": round(sum(losses) / len(losses), 4),
                    "spread_px": spread["spread_px"],
                    "alignment": spread["alignment"],
                }
            )
            losses.clear()
            print(
                f"[{variant}] step {step + 1}: place spread {spread['spread_px']} px, "
                f"alignment {spread['alignment']}",
                flush=True,
            )
            result["seconds"] = round(time.monotonic() - started)
            report(result)
    return result


def main(argv: list[str] | None = None) -> None:
    import torch
    from diffusers import AutoencoderKL

    from localstability.engines import shapes_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=shapes_model_dir(),
        help="its VAE is used (and, by `finetune`, its text encoder and UNet)",
    )
    parser.add_argument("--variants", default="shipped,text-init")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--scenes", type=int, default=3072, help="training scenes to encode")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: the best)")
    args = parser.parse_args(argv)
    from localstability.inference.devices import resolve_device

    device = resolve_device(args.device)
    vae = AutoencoderKL.from_pretrained(args.model / "vae", dtype=torch.float32).to(device).eval()
    shipped_scaling = vae.config.scaling_factor
    data = train.encode_dataset(train.Recipe(dataset_size=args.scenes), vae, device)
    # encode_dataset scales by the spread of these scenes; keep the shipped VAE's scaling.
    rescale = shipped_scaling / vae.config.scaling_factor
    vae.register_to_config(scaling_factor=shipped_scaling)
    data = train.Dataset(data.scenes, (data.latents * rescale).to(device))
    report: dict[str, Any] = {
        "what": "text encoder + UNet trained at the noisiest step alone (input: pure noise, "
        "target: clean latents), from nothing unless the variant says otherwise; spread of "
        "the shape over the nine place words in the predicted picture",
        "grid_spread_px": grid_spread(),
        "steps": args.steps,
        "batch": train.Recipe().batch,
        "scenes": args.scenes,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "variants": {},
    }

    def write(variant: str, result: dict[str, Any]) -> None:
        report["variants"][variant] = result
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    for variant in args.variants.split(","):
        run(
            variant,
            data,
            vae,
            args.steps,
            args.every,
            device,
            partial(write, variant),
            model=args.model,
        )


if __name__ == "__main__":
    main()
