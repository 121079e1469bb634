"""The LoRA adapters a deployment offers, and the adapters one request runs with.

The operator puts adapter files in `lora_dir/<family>/<name>.safetensors`; an engine offers
the adapters of its family's folder (an SD 1.x adapter does not fit SDXL), read again at each
request so that a file dropped in is offered at once. A request names adapters, never paths:
a name is checked against the name rule before any file is looked at, and only a file found
in the folder is ever loaded. An engine may apply adapters to every request (its `loras`
setting); a request's `loras` adds to them, reweighs one it names again, or switches one off
with weight 0.
"""

from __future__ import annotations

from pathlib import Path

from localstability import errors
from localstability.config import Settings
from localstability.engines import LORA_SUFFIX, EngineSpec, is_lora_name
from localstability.protocol import LoraRequest

# One adapter of a run, as the job carries it: [name, file, weight].
RunLora = list[str | float]


class LoraFolder:
    """The adapter files of one deployment, by family."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.lora_folder

    def folder(self, engine: EngineSpec) -> Path:
        return self.root / engine.family.value

    def offered(self, engine: EngineSpec) -> dict[str, Path]:
        """The adapters `engine` offers, name -> file, by name."""
        if not engine.takes_loras:
            return {}
        try:
            files = sorted(self.folder(engine).glob(f"*{LORA_SUFFIX}"))
        except OSError:
            return {}
        return {
            file.name.removesuffix(LORA_SUFFIX): file
            for file in files
            if file.is_file() and is_lora_name(file.name.removesuffix(LORA_SUFFIX))
        }

    def check_engine(self, engine: EngineSpec) -> None:
        """The adapters the engine's settings apply are in its folder (ValueError if not)."""
        configured = self.settings.engine_config(engine.id).loras
        if not configured:
            return
        if not engine.takes_loras:
            raise ValueError(f"engine {engine.id} takes no LoRA adapters")
        offered = self.offered(engine)
        for lora in configured:
            if lora.name not in offered:
                raise ValueError(
                    f"engine {engine.id}: its LoRA {lora.name!r} is not in "
                    f"{self.folder(engine)} (no {lora.name}{LORA_SUFFIX} there)"
                )

    def for_run(self, engine: EngineSpec, requested: list[LoraRequest] | None) -> list[RunLora]:
        """The adapters a request on `engine` runs with: the engine's own, then the
        request's (a name given again takes the request's weight), those of weight 0 left
        out, by name. `invalid_lora` for a name that is not one (a path, a URL) or is given
        twice, `lora_not_found` for one the engine does not offer."""
        weights = {lora.name: lora.weight for lora in self.settings.engine_config(engine.id).loras}
        named: set[str] = set()
        for index, lora in enumerate(requested or ()):
            where = f"loras[{index}].name"
            if not is_lora_name(lora.name):
                raise errors.InvalidLora(
                    f"{where}: {lora.name!r} is not an adapter name; name one of those that "
                    f"GET /v1/engines/list gives for {engine.id} (a name, never a path or URL)"
                )
            if lora.name in named:
                raise errors.InvalidLora(f"{where}: {lora.name!r} is named twice")
            named.add(lora.name)
            weights[lora.name] = lora.weight
        if not weights:
            return []
        offered = self.offered(engine)
        for name in sorted(named - offered.keys()):
            choices = ", ".join(offered) or "none"
            raise errors.LoraNotFound(
                f"{engine.id} offers no LoRA adapter {name!r} (it offers: {choices})"
            )
        runs: list[RunLora] = []
        for name in sorted(weights):
            if weights[name] == 0:
                continue
            if name not in offered:  # the engine's own adapter, removed since the start
                raise errors.LoraNotFound(
                    f"{engine.id}: its LoRA adapter {name!r} is no longer in "
                    f"{self.folder(engine)}; ask the operator"
                )
            runs.append([name, str(offered[name]), weights[name]])
        return runs
