"""Train localstability-shapes-v1 from nothing: a small latent diffusion model of simple scenes.

Three stages, all with fixed seeds, each printing its progress:

1. an AutoencoderKL (8x downsampling, 4 latent channels) learns to reconstruct rendered
   scenes; its latents' spread sets ``scaling_factor``;
2. a fixed set of training scenes is rendered and encoded once;
3. a CLIPTextModel (the real CLIP tokenizer, a small transformer) is trained alone to name
   each attribute of a caption (`pretrain_text_encoder`), then frozen, and a
   UNet2DConditionModel learns to predict the noise of the standard Stable Diffusion schedule
   from its outputs (one caption in ten is empty, for classifier-free guidance), with min-SNR
   loss weights and an exponential moving average of the weights. (`Recipe.text_steps` 0
   trains the text encoder together with the UNet instead; its place words then stay
   nearly alike and the model ignores them.)

The result is saved as a diffusers StableDiffusionPipeline folder (float16 safetensors), which
`StableDiffusionPipeline.from_pretrained` loads unchanged. Training saves its state every
`--save-every` steps and `--resume` continues from there.

    python -m localstability.shapes.train --out build/shapes

On the 2-core CPU of the project's machines the defaults take about 3.6 hours (measured in
parts on 2026-11-26 and 27: the autoencoder 17.6 minutes, encoding 4, the text encoder 3, the
UNet 3.25 s a step; ``--resume`` reuses an autoencoder and a training state found in
``--out``, which is how the shipped weights were made over three sittings); on a GPU a few
minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localstability.shapes import scenes
from localstability.tiny import (
    CLIP_BOS_ID,
    CLIP_EOS_ID,
    CLIP_EOS_TOKEN,
    SD_SCHEDULE,
    build_clip_tokenizer_files,
    make_clip_tokenizer,
    no_transformers_progress_bar,
)

ENGINE_ID = "localstability-shapes-v1"
LATENT_SIZE = scenes.IMAGE_SIZE // 8


@dataclass(frozen=True)
class Recipe:
    """Every number that decides the result; saved next to the weights."""

    seed: int = 20261126
    vae_steps: int = 1600
    shape_weight: float = 10.0
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    dataset_size: int = 24_000
    # Steps of 256 captions (`text_batch`) that pretrain the text encoder alone, which then
    # stays frozen while the UNet learns (`pretrain_text_encoder`). 0: the text encoder learns
    # together with the UNet (how the first versions were made; they ignore places).
    text_steps: int = 300
    text_batch: int = 256
    text_lr: float = 1e-3
    unet_steps: int = 3500
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 100
    # The learning rate follows a cosine from `lr` down to a tenth over the first
    # `restart_at` steps, then restarts (a warm restart, as in SGDR): up to `restart_peak`
    # times `lr` over `warmup` steps, and a second cosine down to a tenth at `unet_steps`.
    # 0, or not under `unet_steps`: one cosine over all the steps.
    restart_at: int = 1800
    restart_peak: float = 0.5
    empty_caption: float = 0.1
    snr_gamma: float = 5.0
    ema_power: float = 2 / 3
    ema_max_decay: float = 0.999
    # From this step on, the noise also carries coarse parts (1x1, 2x2, 4x4, 8x8, upsampled)
    # with these weights, rescaled to unit variance (see _multiscale); strongest at 2x2 and
    # 4x4, the scale of a shape's place.
    multiscale_noise_from: int = 600
    multiscale_noise: tuple[float, ...] = (0.6, 0.7, 0.7, 0.3)
    text_hidden: int = 64
    text_layers: int = 3
    unet_blocks: tuple[int, ...] = (64, 128, 128)
    vae_blocks: tuple[int, ...] = (8, 16, 32, 64)


def build_vae(recipe: Recipe) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(recipe.vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(recipe.vae_blocks),
        block_out_channels=recipe.vae_blocks,
        layers_per_block=1,
        latent_channels=4,
        # One group: with a group per channel (8 of 8) the decoder's last norm erases the
        # colour of a flat picture, and reconstruction stalls.
        norm_num_groups=1,
        sample_size=scenes.IMAGE_SIZE,
    )


def build_text_encoder(recipe: Recipe) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=recipe.text_hidden,
        intermediate_size=recipe.text_hidden * 4,
        projection_dim=recipe.text_hidden,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
        pad_token_id=CLIP_EOS_ID,
    )
    return CLIPTextModel(config)


def build_unet(recipe: Recipe) -> Any:
    from diffusers import UNet2DConditionModel

    levels = len(recipe.unet_blocks)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=recipe.unet_blocks,
        layers_per_block=1,
        # Cross-attention at every level but the lowest (and in the middle block).
        down_block_types=(*["CrossAttnDownBlock2D"] * (levels - 1), "DownBlock2D"),
        up_block_types=("UpBlock2D", *["CrossAttnUpBlock2D"] * (levels - 1)),
        cross_attention_dim=recipe.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_scheduler() -> Any:
    from diffusers import PNDMScheduler

    return PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False)


class Progress:
    """One line every `every` steps: step, loss, seconds per step, time left."""

    def __init__(self, stage: str, total: int, every: int = 50) -> None:
        self.stage, self.total, self.every = stage, total, every
        self.start = time.monotonic()
        self.losses: list[float] = []

    def step(self, done: int, loss: float | None = None, first: int = 0) -> None:
        if loss is not None:
            self.losses.append(loss)
        if done % self.every and done != self.total:
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / max(1, done - first) * (self.total - done)
        mean = f" loss {sum(self.losses) / len(self.losses):.4f}" if self.losses else ""
        self.losses.clear()
        print(
            f"[{self.stage}] {done}/{self.total}{mean}, {elapsed / 60:.1f} min, "
            f"{left / 60:.1f} min left",
            flush=True,
        )


def _lr_at(step: int, total: int, warmup: int, restart_at: int = 0, peak: float = 0.5) -> float:
    """The learning rate's factor at `step`: a linear warm-up, then a cosine down to 0.1 at
    `total`; with `restart_at` inside (0, total), a warm restart there (see `Recipe`)."""
    floor, top, start = 0.0, 1.0, 0
    if 0 < restart_at < total:
        if step < restart_at:
            total = restart_at
        else:
            floor, top, start = 0.1, peak, restart_at
    step -= start
    if step < warmup:
        return floor + (top - floor) * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - start - warmup)
    return 0.1 + (top - 0.1) * 0.5 * (1 + math.cos(math.pi * progress))


def _image_batches(rng: random.Random, batch: int) -> Iterator[Any]:
    import torch

    while True:
        images = [scenes.render(scenes.training_scene(rng), rng) for _ in range(batch)]
        yield torch.from_numpy(np.stack([scenes.to_array(i) for i in images]))


def train_vae(recipe: Recipe, device: str) -> Any:
    import torch

    torch.manual_seed(recipe.seed)
    vae = build_vae(recipe).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_at(s, recipe.vae_steps, 50)
    )
    batches = _image_batches(random.Random(recipe.seed), recipe.vae_batch)
    progress = Progress("vae", recipe.vae_steps)
    for step in range(recipe.vae_steps):
        images = next(batches).to(device)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        error = (decoded - images).abs() + (decoded - images) ** 2
        loss = (error * _shape_weights(images, recipe.shape_weight)).mean()
        loss = loss + recipe.kl_weight * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(step + 1, loss.item())
        if (step + 1) % 250 == 0 or step + 1 == recipe.vae_steps:
            print(f"[vae] shape colours read back right: {_colour_check(vae):.0%}", flush=True)
    return vae.eval()


def _shape_weights(images: Any, weight: float) -> Any:
    """Per-pixel loss weights: `weight` on the shapes, 1 on the background.

    The shapes are a few per cent of the pixels; without this the autoencoder learns the
    backgrounds and smears the shapes' colours.
    """
    import torch

    edges = torch.cat([images[:, :, 0, :], images[:, :, -1, :]], dim=2)  # top and bottom rows
    background = edges.median(dim=2).values[:, :, None, None]
    on_shape = ((images - background).abs().sum(dim=1, keepdim=True) > 0.3).float()
    return 1 + (weight - 1) * on_shape


def _colour_check(vae: Any, count: int = 48) -> float:
    """How often the detector reads the shape's colour right after a round trip."""
    import torch
    from PIL import Image

    from localstability.shapes.detect import detect

    rng = random.Random(99)
    chosen = [scenes.random_scene(rng, single=True) for _ in range(count)]
    pixels = np.stack([scenes.to_array(scenes.render(s, rng)) for s in chosen])
    was_training = vae.training
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(torch.from_numpy(pixels).to(vae.device)).latent_dist.mean
        decoded = vae.decode(latents).sample.clamp(-1, 1).float().cpu().numpy()
    vae.train(was_training)
    images = ((decoded.transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8)
    right = sum(
        detect(Image.fromarray(i)).colour == s.colour for s, i in zip(chosen, images, strict=True)
    )
    return right / count


@dataclass
class Dataset:
    scenes: list[scenes.Scene]
    latents: Any  # float32 tensor (N, 4, 16, 16), already multiplied by the VAE's scaling_factor


def encode_dataset(recipe: Recipe, vae: Any, device: str) -> Dataset:
    import torch

    rng = random.Random(recipe.seed + 1)
    chosen = [scenes.training_scene(rng) for _ in range(recipe.dataset_size)]
    latents = []
    progress = Progress("encode", recipe.dataset_size, every=4096)
    chunk = 256
    with torch.no_grad():
        for start in range(0, len(chosen), chunk):
            part = chosen[start : start + chunk]
            pixels = np.stack([scenes.to_array(scenes.render(s, rng)) for s in part])
            mean = vae.encode(torch.from_numpy(pixels).to(device)).latent_dist.mean
            latents.append(mean.float().cpu())
            progress.step(start + len(part))
    stacked = torch.cat(latents)
    scaling = float(1.0 / stacked.std())
    vae.register_to_config(scaling_factor=scaling)
    print(f"[encode] latent std {stacked.std():.4f} -> scaling_factor {scaling:.4f}", flush=True)
    return Dataset(chosen, stacked * scaling)


def _multiscale(noise: Any, weights: tuple[float, ...]) -> Any:
    """White noise plus coarse noise at 1x1, 2x2, 4x4, 8x8 (bilinear), at unit variance.

    The SD noise schedule leaves some signal at its last step: at 16x16 latents the
    background's colour and a shape's place can still be read from the noisiest inputs, so
    the model learns to take them from there, and at inference (pure noise) they come out at
    random whatever the prompt says. Coarse noise hides that signal; the prompt must decide
    (the idea of "offset" and "pyramid" noise, as in fine-tunes of SD).
    """
    import torch
    import torch.nn.functional as functional

    batch, channels, height, width = noise.shape
    total = noise
    for level, weight in enumerate(weights):
        size = 2**level
        coarse = torch.randn(batch, channels, size, size, device=noise.device)
        total = total + weight * functional.interpolate(
            coarse, size=(height, width), mode="bilinear", align_corners=False
        )
    return total / math.sqrt(1 + sum(w * w for w in weights))


def _tokenize(tokenizer: Any, captions: list[str], device: str) -> Any:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


# What the text encoder's pretraining asks it to name: (attribute, its classes), each with a
# last class for "not said" (for the place, also "several shapes").
_NAMED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("colour", tuple(scenes.COLOURS)),
    ("shape", scenes.SHAPES),
    ("size", tuple(scenes.SIZES)),
    ("position", tuple(scenes.POSITIONS)),
    ("background", tuple(scenes.COLOURS)),
    ("count", ("1", "2", "3")),
)


def _attribute_labels(scene: scenes.Scene, flags: dict[str, bool]) -> list[int]:
    said = {
        "colour": scene.colour if flags["with_colour"] else None,
        "shape": scene.shape,
        "size": scene.size if flags["with_size"] else None,
        "position": scene.position if flags["with_position"] else None,
        "background": scene.background if flags["with_background"] else None,
        "count": str(scene.count),
    }
    return [
        names.index(value) if value is not None else len(names)
        for attribute, names in _NAMED
        for value in (said[attribute],)
    ]


def pretrain_text_encoder(recipe: Recipe, device: str) -> Any:
    """A text encoder trained alone to name each attribute of training captions; frozen.

    Linear heads read every attribute (or "not said") from the mean of its outputs over all
    tokens, which is what the UNet's cross-attention sees before it has learnt where to look.
    Trained together with the UNet from nothing, the text encoder's outputs barely differ
    between the nine places and the UNet does not learn them; this makes them differ first,
    much as SD's UNet learns on a text encoder trained elsewhere and kept frozen.
    """
    import torch

    torch.manual_seed(recipe.seed + 4)
    rng = random.Random(recipe.seed + 5)
    tokenizer = make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN)
    text_encoder = build_text_encoder(recipe).to(device).train()
    sizes = [len(names) + 1 for _, names in _NAMED]
    heads = torch.nn.Linear(recipe.text_hidden, sum(sizes)).to(device)
    params = [*text_encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.text_lr, weight_decay=0.01)
    progress = Progress("text", recipe.text_steps)
    for step in range(recipe.text_steps):
        captions, labels = [], []
        for _ in range(recipe.text_batch):
            scene, flags = scenes.training_scene(rng), scenes.training_flags(rng)
            captions.append(scene.caption(**flags))
            labels.append(_attribute_labels(scene, flags))
        hidden = text_encoder(_tokenize(tokenizer, captions, device)).last_hidden_state
        logits = heads(hidden.mean(dim=1)).split(sizes, dim=1)
        target = torch.tensor(labels, device=device)
        loss = torch.stack(
            [torch.nn.functional.cross_entropy(part, target[:, i]) for i, part in enumerate(logits)]
        ).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step(step + 1, loss.item())
    right = [
        float((part.argmax(1) == target[:, i]).float().mean()) for i, part in enumerate(logits)
    ]
    named = ", ".join(f"{a} {r:.0%}" for (a, _), r in zip(_NAMED, right, strict=True))
    print(f"[text] named right in the last batch: {named}", flush=True)
    return text_encoder.eval().requires_grad_(False)


def _state_path(out: Path) -> Path:
    return out / "training-state.pt"


def train_denoiser(
    recipe: Recipe, data: Dataset, device: str, out: Path, save_every: int, resume: bool
) -> tuple[Any, Any, Any, int]:
    """Train the UNet (and the text encoder with it unless `recipe.text_steps` pretrains and
    freezes it); return the EMA copies (text encoder, unet), the tokenizer and the step the
    UNet started at (0, or where `resume` found a saved state)."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    state_file = _state_path(out)
    resuming = resume and state_file.is_file()
    pretrained = (
        pretrain_text_encoder(recipe, device) if recipe.text_steps and not resuming else None
    )
    torch.manual_seed(recipe.seed + 2)
    tokenizer = make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN)
    text_encoder = build_text_encoder(recipe).to(device) if pretrained is None else pretrained
    text_encoder.train(not recipe.text_steps).requires_grad_(not recipe.text_steps)
    unet = build_unet(recipe).to(device).train()
    params = [p for p in (*text_encoder.parameters(), *unet.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: _lr_at(
            s, recipe.unet_steps, recipe.warmup, recipe.restart_at, recipe.restart_peak
        ),
    )
    ema = EMAModel(
        params,
        decay=recipe.ema_max_decay,
        use_ema_warmup=True,
        power=recipe.ema_power,
    )
    noise_schedule = DDPMScheduler(**SD_SCHEDULE)
    rng = random.Random(recipe.seed + 3)
    first = 0
    if resuming:
        state = torch.load(state_file, map_location=device, weights_only=False)
        text_encoder.load_state_dict(state["text_encoder"])
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema.load_state_dict(state["ema"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        first = state["step"]
        print(f"[unet] resumed at step {first}", flush=True)
    latents_all = data.latents.to(device)
    progress = Progress("unet", recipe.unet_steps)
    for step in range(first, recipe.unet_steps):
        index = [rng.randrange(len(data.scenes)) for _ in range(recipe.batch)]
        captions = [
            "" if rng.random() < recipe.empty_caption else scenes.training_caption(s, rng)
            for s in (data.scenes[i] for i in index)
        ]
        latents = latents_all[index]
        noise = torch.randn_like(latents)
        if step >= recipe.multiscale_noise_from:
            noise = _multiscale(noise, recipe.multiscale_noise)
        timesteps = torch.randint(0, 1000, (recipe.batch,), device=device)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        hidden = text_encoder(_tokenize(tokenizer, captions, device)).last_hidden_state
        predicted = unet(noisy, timesteps, hidden).sample
        snr = compute_snr(noise_schedule, timesteps)
        weights = torch.clamp(snr, max=recipe.snr_gamma) / snr
        loss = (((predicted - noise) ** 2).mean(dim=(1, 2, 3)) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)
        progress.step(step + 1, loss.item(), first)
        if (step + 1) % save_every == 0 and step + 1 < recipe.unet_steps:
            torch.save(
                {
                    "text_encoder": text_encoder.state_dict(),
                    "unet": unet.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "ema": ema.state_dict(),
                    "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step + 1,
                },
                state_file,
            )
            print(f"[unet] saved training state at step {step + 1}", flush=True)
    ema.copy_to(params)
    return text_encoder.eval(), unet.eval(), tokenizer, first


def save_pipeline(vae: Any, text_encoder: Any, unet: Any, tokenizer: Any, dest: Path) -> Path:
    """Write the diffusers folder (float16 weights) to `dest`, replacing what is there."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # As in SD 1's own config: samplers that would clip the predicted latents to [-1, 1]
    # (DDIM's default) must not; ours have unit spread, so clipping grays the picture.
    pipe.scheduler.register_to_config(clip_sample=False)
    pipe.to(torch.float16)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with no_transformers_progress_bar():
        pipe.save_pretrained(tmp, safe_serialization=True)
    # The classic vocab.json + merges.txt load with any CLIP tokenizer class; the 3.6 MB
    # tokenizer.json that transformers also writes only repeats them.
    build_clip_tokenizer_files(tmp / "tokenizer")
    (tmp / "tokenizer" / "tokenizer.json").unlink()
    pipe.to(torch.float32)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def train(recipe: Recipe, out: Path, device: str, save_every: int, resume: bool) -> Path:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    vae_file = out / "vae-trained"
    vae_reused = resume and (vae_file / "config.json").is_file()
    if vae_reused:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_file).to(device).eval()
        print("[vae] loaded from an earlier run", flush=True)
    else:
        vae = train_vae(recipe, device)
        vae.save_pretrained(vae_file)
    timings = {"vae_s": round(time.monotonic() - started)}
    data = encode_dataset(recipe, vae, device)
    timings["encode_s"] = round(time.monotonic() - started) - timings["vae_s"]
    text_encoder, unet, tokenizer, resumed_at = train_denoiser(
        recipe, data, device, out, save_every, resume
    )
    timings["denoiser_s"] = (
        round(time.monotonic() - started) - timings["vae_s"] - timings["encode_s"]
    )
    dest = save_pipeline(vae, text_encoder, unet, tokenizer, out / ENGINE_ID)
    sizes = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))
    }
    report = {
        "engine": ENGINE_ID,
        "recipe": asdict(recipe),
        # --resume found an autoencoder from an earlier run in --out and trained none.
        "vae_from_earlier_run": vae_reused,
        # The step the UNet went on from a state an earlier run saved (0: it began here).
        "unet_resumed_at": resumed_at,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seconds": {**timings, "total": round(time.monotonic() - started)},
        "parameters": sizes,
        "bytes": sum(f.stat().st_size for f in dest.rglob("*.safetensors")),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"[done] {dest} in {report['seconds']['total'] / 60:.1f} min", flush=True)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a working folder")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: the best)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--vae-steps", type=int, default=Recipe.vae_steps)
    parser.add_argument("--text-steps", type=int, default=Recipe.text_steps)
    parser.add_argument("--unet-steps", type=int, default=Recipe.unet_steps)
    parser.add_argument("--restart-at", type=int, default=Recipe.restart_at)
    parser.add_argument("--dataset-size", type=int, default=Recipe.dataset_size)
    args = parser.parse_args(argv)
    from localstability.inference.devices import resolve_device

    recipe = Recipe(
        vae_steps=args.vae_steps,
        text_steps=args.text_steps,
        unet_steps=args.unet_steps,
        restart_at=args.restart_at,
        dataset_size=args.dataset_size,
    )
    train(recipe, args.out, resolve_device(args.device), args.save_every, args.resume)


if __name__ == "__main__":
    main()
