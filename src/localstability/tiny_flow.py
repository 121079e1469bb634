"""Tiny random-weight Stable Diffusion 3.5 and Flux.1 pipelines for tests, built offline.

The flow-matching families beside localstability.tiny's Stable Diffusion ones, with the same
promise: the layout of the real models (their pipeline classes, components, configuration
style, latent channels and scaling), seeded random weights, every image noise.

``sd3``
    :class:`~diffusers.StableDiffusion3Pipeline` shaped like SD 3.5: two CLIP text encoders
    with projections (the real CLIP vocabulary, as in ``tiny``), a T5 encoder with the tokenizer
    built here, an :class:`~diffusers.SD3Transformer2DModel` (patch 2, 16 latent channels,
    3.5's QK RMS norm, one dual-attention layer), a 16-channel VAE without quant convs
    (scaling 1.5305, shift 0.0609) and SD 3.5's FlowMatchEuler scheduler (shift 3.0).
``flux``
    :class:`~diffusers.FluxPipeline` shaped like FLUX.1 [dev]: one CLIP text encoder (its
    pooled output), the T5 encoder, a :class:`~diffusers.FluxTransformer2DModel` with the
    guidance embedding (distilled guidance), a 16-channel VAE (scaling 0.3611, shift 0.1159)
    and the dynamic-shift FlowMatchEuler scheduler.
``flux-schnell``
    Like FLUX.1 [schnell]: as ``flux`` without the guidance embedding, with schnell's fixed
    shift 1.0 scheduler.

The T5 tokenizer: T5's own layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, a SentencePiece
Unigram model whose pieces carry the ``▁`` word-start mark, 100 ``<extra_id_N>`` sentinels)
wrapped in transformers' ``T5TokenizerFast``; its pieces are derived deterministically from the
CLIP BPE vocabulary that ships in open-clip-torch (each word and word-start piece, scored by
merge rank, plus every printable ASCII character), since T5's own SentencePiece model is not
on PyPI. Token ids are therefore not T5's, but the length limits (the pipelines'
``max_sequence_length``, up to T5's 512) work as with the real tokenizer.
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from localstability.tiny import (
    _SD2_PAD_TOKEN,
    _TEXT_HIDDEN,
    _TEXT_PROJECTION,
    CLIP_EOS_ID,
    CLIP_EOS_TOKEN,
    _clip_vocab_and_merges,
    _seeded,
    _text_encoder,
    _vae,
    make_clip_tokenizer,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline

FLOW_FAMILIES: tuple[str, ...] = ("sd3", "flux", "flux-schnell")
"""The tiny flow-matching families this module builds."""

T5_MAX_LENGTH = 512
"""T5's (and the tiny T5's) longest input: the most a prompt's T5 encoding can hold."""

_T5_PIECES = 32_000  # as the real T5 vocabulary, before its 100 sentinels
_T5_EXTRA_IDS = 100
_T5_HIDDEN = 64  # at least both CLIP widths together: SD3 pads their concatenation to it
_LATENT_CHANNELS = 16
# SD3's transformer: heads x head dim = its width; positions for up to 96x96 patches (1536 px).
_SD3_HEADS, _SD3_HEAD_DIM = 2, 16
_SD3_POS_EMBED_MAX = 96
# Flux's: the rotary axes split the head dim (16 = 4 + 6 + 6).
_FLUX_HEADS, _FLUX_HEAD_DIM = 2, 16
_FLUX_ROPE_AXES = (4, 6, 6)

_SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
_FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
_FLUX_SCHNELL_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}


@lru_cache(maxsize=1)
def t5_vocabulary() -> tuple[tuple[str, float], ...]:
    """The tiny T5's Unigram pieces and scores (log-probabilities), deterministic."""
    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    for char in string.printable.strip():
        pieces.setdefault(char, -12.0)
        pieces.setdefault("▁" + char, -11.0)
    vocab, _ = _clip_vocab_and_merges()
    for token, rank in sorted(vocab.items(), key=lambda item: item[1]):
        word = token.removesuffix("</w>")
        if not word or not (word.isascii() and word.isprintable()) or "<|" in word:
            continue
        score = -3.0 - rank / 10_000  # earlier merges are the more frequent pieces
        pieces.setdefault("▁" + word, score)
        pieces.setdefault(word, score - 1.0)
        if len(pieces) >= _T5_PIECES:
            break
    return tuple(pieces.items())


def make_t5_tokenizer() -> Any:
    """The tiny T5 tokenizer (``T5TokenizerFast``): see the module's docstring."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(
        vocab=list(t5_vocabulary()), extra_ids=_T5_EXTRA_IDS, model_max_length=T5_MAX_LENGTH
    )


def _t5_encoder(offset: int, vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=_T5_HIDDEN,
        d_kv=16,
        d_ff=96,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as SD3's and Flux's t5-v1_1-xxl
        dense_act_fn="gelu_new",
        is_gated_act=True,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(offset):
        model = T5EncoderModel(config)
    return model.eval()


def _t5(offset: int) -> tuple[Any, Any]:
    tokenizer = make_t5_tokenizer()
    return _t5_encoder(offset, len(tokenizer)), tokenizer


def _flow_vae(offset: int, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """tiny's VAE with the flow families' 16 latent channels, shift and no quant convs."""
    return _vae(
        offset,
        1024,
        scaling_factor,
        latent_channels=_LATENT_CHANNELS,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_sd3() -> DiffusionPipeline:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    with _seeded(44):
        transformer = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            num_layers=1,
            attention_head_dim=_SD3_HEAD_DIM,
            num_attention_heads=_SD3_HEADS,
            joint_attention_dim=_T5_HIDDEN,
            caption_projection_dim=_SD3_HEADS * _SD3_HEAD_DIM,
            pooled_projection_dim=2 * _TEXT_PROJECTION,
            pos_embed_max_size=_SD3_POS_EMBED_MAX,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        ).eval()
    text_encoder_3, tokenizer_3 = _t5(43)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**_SD3_SCHEDULER),
        vae=_flow_vae(40, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_text_encoder(41, "quick_gelu", pad_token_id=CLIP_EOS_ID, projection=True),
        tokenizer=make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN),
        text_encoder_2=_text_encoder(42, "gelu", pad_token_id=0, projection=True),
        tokenizer_2=make_clip_tokenizer(pad_token=_SD2_PAD_TOKEN),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(guidance: bool, scheduler: dict[str, Any], offset: int) -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with _seeded(offset + 4):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * _LATENT_CHANNELS,  # latents packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=_FLUX_HEAD_DIM,
            num_attention_heads=_FLUX_HEADS,
            joint_attention_dim=_T5_HIDDEN,
            pooled_projection_dim=_TEXT_HIDDEN,
            guidance_embeds=guidance,
            axes_dims_rope=_FLUX_ROPE_AXES,
        ).eval()
    text_encoder_2, tokenizer_2 = _t5(offset + 3)
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
        vae=_flow_vae(offset, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_text_encoder(
            offset + 1, "quick_gelu", pad_token_id=CLIP_EOS_ID, projection=False
        ),
        tokenizer=make_clip_tokenizer(pad_token=CLIP_EOS_TOKEN),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def build_flux() -> DiffusionPipeline:
    return _build_flux(guidance=True, scheduler=_FLUX_DEV_SCHEDULER, offset=50)


def build_flux_schnell() -> DiffusionPipeline:
    return _build_flux(guidance=False, scheduler=_FLUX_SCHNELL_SCHEDULER, offset=60)


BUILDERS = {"sd3": build_sd3, "flux": build_flux, "flux-schnell": build_flux_schnell}
