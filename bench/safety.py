"""What the output filter costs: NudeNet's look at an image vs the generation that made it.

Two parts:

- In this process: loading NudeNet's detector (once per worker), and its median time per image
  (`inference.safety.screen`, blur included when it flags) on a 512x512 and a 1024x1024 photo
  (scikit-image's astronaut, which it flags for FACE_FEMALE) and on noise it does not flag.
- Through our HTTP server, two servers on the tiny models started by this command, the output
  filter off on one and NudeNet on the other, in alternating rounds: the median latency of a
  512x512 SD 1.6 text-to-image (tiny model, `--steps`) and of a 128x128 image of our own
  shapes model (a real trained model); the ratio on/off. The tiny SD model's own time is far
  below a real one's, so its ratio is an upper bound of what the filter adds.

    .venv/bin/python -m bench.safety [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import finish, repeats_and_steps

ON = {
    "LOCALSTABILITY_SAFETY__OUTPUT_FILTER": "nudenet",
    "LOCALSTABILITY_SAFETY__OUTPUT_LABELS": '["FACE_FEMALE", "FEMALE_BREAST_EXPOSED"]',
}
REQUESTS = {
    "stable-diffusion-v1-6": {"width": 512, "height": 512},
    "localstability-shapes-v1": {"width": 128, "height": 128},
}


def photo(size: int) -> Any:
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    folder = Path((spec.submodule_search_locations or [""])[0]) if spec else Path()
    return Image.open(folder / "data" / "astronaut.png").convert("RGB").resize((size, size))


def in_process(repeats: int) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from localstability.inference.diffusion import GeneratedImage
    from localstability.inference.safety import NudeNet, OutputFilter, screen
    from localstability.safety.settings import OutputClassifier

    began = time.perf_counter()
    detector = NudeNet(None)
    load_s = time.perf_counter() - began
    spec = OutputFilter(OutputClassifier.NUDENET, ("FACE_FEMALE",), 0.5)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), np.uint8))
    cases = {"photo_512": photo(512), "photo_1024": photo(1024), "noise_512": noise}
    rows = {}
    for name, image in cases.items():
        screen([GeneratedImage(image, 0, False)], spec, detector)  # warm
        times, flagged = [], False
        for _ in range(repeats):
            start = time.perf_counter()
            [out] = screen([GeneratedImage(image, 0, False)], spec, detector)
            times.append(time.perf_counter() - start)
            flagged = out.nsfw
        rows[name] = {"median_s": round(statistics.median(times), 4), "flagged": flagged}
    return {"classifier": "nudenet 3.4.2 (320n.onnx)", "load_s": round(load_s, 3), **rows}


def through_http(tiny: Path, repeats: int, steps: int) -> list[dict[str, Any]]:
    from localstability.testing import start_server

    servers = {
        "off": start_server(tiny / "localstability.toml", tiny / "off.log"),
        "on": start_server(tiny / "localstability.toml", tiny / "on.log", env=ON),
    }
    rows = []
    try:
        for engine, size in REQUESTS.items():
            body: dict[str, Any] = {
                "text_prompts": [{"text": "a red circle on a blue background"}],
                "steps": steps,
                "seed": 1,
                **size,
            }
            times: dict[str, list[float]] = {"off": [], "on": []}
            for round_ in range(repeats + 1):  # the first round loads the models: not kept
                for mode, server in servers.items():
                    with server.client() as client:
                        start = time.perf_counter()
                        answer = client.post(f"/v1/generation/{engine}/text-to-image", json=body)
                        elapsed = time.perf_counter() - start
                    if answer.status_code != 200:
                        raise RuntimeError(f"{answer.status_code} {answer.text}")
                    if round_:
                        times[mode].append(elapsed)
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            rows.append(
                {
                    "engine_id": engine,
                    "size": f"{size['width']}x{size['height']}",
                    "steps": steps,
                    "filter_off_median_s": round(off, 4),
                    "filter_on_median_s": round(on, 4),
                    "ratio": round(on / off, 3),
                }
            )
    finally:
        for server in servers.values():
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run with these command-line arguments (default: sys.argv); returns what it wrote."""
    from localstability.testing import run_cli

    args = repeats_and_steps(argv, __doc__)
    began = time.perf_counter()
    print("NudeNet in process", flush=True)
    local = in_process(args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-safety-") as scratch:
        tiny = Path(scratch) / "tiny"
        print("building the tiny models", flush=True)
        run_cli("models", "make-tiny", str(tiny))
        print("through HTTP: filter off vs NudeNet", flush=True)
        http = through_http(tiny, args.repeats, args.steps)
    return finish("safety", began, repeats=args.repeats, in_process=local, http=http)


if __name__ == "__main__":
    main()
