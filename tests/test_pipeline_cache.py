"""The pipeline cache's byte budget, in process on the tiny models (the count budget, the
metrics and the background loads are tested through HTTP in test_memory_budget.py): the
bytes measured after a load, a pipeline in use never unloaded, one larger than the budget
alone still loaded and kept."""

from __future__ import annotations

from pathlib import Path

import torch

from localstability.engines import Family
from localstability.inference.cache import PipelineCache, held_bytes
from localstability.inference.loader import WeightSource


def test_the_byte_budget_unloads_the_coldest_pipeline_that_no_job_holds(tiny_dir: Path) -> None:
    sd1 = WeightSource("a", Family.SD1, str(tiny_dir / "sd1"))
    sd2 = WeightSource("b", Family.SD2, str(tiny_dir / "sd2"))
    cache = PipelineCache("cpu", torch.float32, True, tiny_dir / "models", max_bytes=1)
    pipe = cache.get(sd1)
    modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    assert held_bytes(pipe) == sum(t.numel() * t.element_size() for t in tensors) > 1
    assert cache.loaded(sd1)  # larger than the budget alone: loaded all the same
    with cache.holding():  # a job runs on sd1, and another load comes
        assert cache.get(sd1) is pipe
        cache.get(sd2)
        assert cache.loaded(sd1) and cache.loaded(sd2)  # sd1 is held: over budget meanwhile
    # The job ended: sd1, the least recently used, goes; sd2 stays (the last one always does).
    assert not cache.loaded(sd1) and cache.loaded(sd2)
    cache.get(sd1)  # loads again, and unloads sd2 before it loads (sd1's size is known now)
    assert cache.loaded(sd1) and not cache.loaded(sd2)
