"""LoRA adapters on a loaded pipeline, through diffusers' PEFT integration.

A run names its adapters (name, file, weight). Each adapter file is loaded into the pipeline
once (`load_lora_weights`) and kept beside the base weights, which are never reloaded; a run
then only sets which adapters are active and how strongly (`set_adapters`), and a run with
none switches them off (`disable_lora`). The views that runs make with `from_pipe` share the
pipeline's models, so they see the same adapters. At most MAX_LOADED adapters stay loaded on
a pipeline; the least recently used goes first. A file changed on disk is loaded again.

Runs on the one inference thread of a process: two runs never set adapters at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from localstability import errors

log = logging.getLogger(__name__)

# Adapters kept loaded on one pipeline (each is a few to a few hundred MB on real models).
MAX_LOADED = 16

# What a loaded adapter was read from: (file, modification time in ns, size).
Stamp = tuple[str, int, int]


@dataclass(frozen=True)
class Adapter:
    """One adapter of a run: its name (for messages), its file and its weight."""

    name: str
    file: str
    weight: float

    @classmethod
    def of(cls, item: Sequence[Any]) -> Adapter:
        """From the job's plain data: [name, file, weight]."""
        name, file, weight = item
        return cls(str(name), str(file), float(weight))


# Per pipeline: the adapters loaded on it, PEFT adapter name -> stamp, least recent first.
_loaded: WeakKeyDictionary[Any, OrderedDict[str, Stamp]] = WeakKeyDictionary()


def _stamp(adapter: Adapter) -> Stamp:
    try:
        stat = os.stat(adapter.file)
    except OSError as exc:
        raise errors.LoraNotFound(
            f"LoRA adapter {adapter.name!r}: its file is not on this machine ({exc.strerror})"
        ) from None
    return adapter.file, stat.st_mtime_ns, stat.st_size


def peft_name(stamp: Stamp) -> str:
    """The adapter's name inside PEFT: one per file version (PEFT's names may hold no '.')."""
    return "lora_" + hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]


def loaded_adapters(pipe: Any) -> list[str]:
    """The PEFT names of the adapters loaded on `pipe`, least recently used first."""
    return list(_loaded.get(pipe, ()))


def _unload(pipe: Any, loaded: OrderedDict[str, Stamp], name: str) -> None:
    pipe.delete_adapters(name)
    del loaded[name]


def _load(pipe: Any, adapter: Adapter, name: str) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(adapter.file)
        with warnings.catch_warnings():
            # PEFT warns that a model holds several adapters: that is what this module does.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            pipe.load_lora_weights(state, adapter_name=name)
    except Exception as exc:
        with contextlib.suppress(Exception):  # a load failed half way may leave layers behind
            pipe.delete_adapters(name)
        raise errors.InvalidLora(
            f"LoRA adapter {adapter.name!r} does not load on this engine: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def activate(pipe: Any, adapters: Sequence[Adapter]) -> None:
    """Make `adapters` (with their weights) the active ones on `pipe`; none: switch LoRA off."""
    loaded = _loaded.setdefault(pipe, OrderedDict())
    if not adapters:
        if loaded:
            pipe.disable_lora()
        return
    names: list[str] = []
    for adapter in adapters:
        stamp = _stamp(adapter)
        name = peft_name(stamp)
        if name not in loaded:
            for stale in [n for n, s in loaded.items() if s[0] == stamp[0]]:
                _unload(pipe, loaded, stale)  # the same file, changed on disk since
            _load(pipe, adapter, name)
            loaded[name] = stamp
            log.info("lora loaded", extra={"lora": adapter.name, "file": adapter.file})
        loaded.move_to_end(name)
        names.append(name)
    while len(loaded) > MAX_LOADED and next(iter(loaded)) not in names:
        _unload(pipe, loaded, next(iter(loaded)))
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=[adapter.weight for adapter in adapters])
