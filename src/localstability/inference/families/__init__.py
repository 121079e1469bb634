"""One adapter per model family: what the inference code needs to know about a family.

An adapter holds its family's diffusers pipeline class per role, how one prompt becomes the
pipeline call's keyword arguments, and which samplers it offers. The code that loads and runs
pipelines (`loader`, `prompts`, `diffusion`, `upscale`) asks `adapter_for(family)` and never
looks at a pipeline to guess what it is.

Adapters are found, not listed: every module of this package that defines `ADAPTERS` (a tuple
of adapter instances) is imported on the first `adapter_for` call, so a new family is one new
module here (and its `engines.Family` member and catalogue entry).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from localstability.engines import Family
from localstability.inference.schedulers import DEFAULT_SAMPLER, SchedulerChoice, make_scheduler
from localstability.protocol import Sampler

# A negative prompt's keyword arguments are the positive ones' names with this prefix
# (prompt_embeds -> negative_prompt_embeds, pooled_prompt_embeds -> negative_pooled_...).
NEGATIVE_PREFIX = "negative_"


class Role(StrEnum):
    """What a pipeline of a family is for. `BASE` is what an engine loads (its text-to-image
    pipeline); `INPAINT` is also what a dedicated inpainting checkpoint loads as."""

    BASE = "base"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


class UnknownFamily(LookupError):
    """No adapter covers the family."""


class NoPipeline(LookupError):
    """The family has no diffusers pipeline for the role."""


class FamilyAdapter:
    """The shared interface of the family adapters, with the behaviour most of them share.

    Subclasses set the class attributes and implement the prompt encoding when their models
    take text prompts. One instance per adapter, in its module's `ADAPTERS`.
    """

    # The engines.Family members this adapter serves.
    families: ClassVar[frozenset[Family]] = frozenset()
    # Role -> diffusers pipeline class name (a Role's value as the key).
    pipelines: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # The samplers offered, each with its scheduler (see localstability.inference.schedulers).
    samplers: ClassVar[Mapping[Sampler, SchedulerChoice]] = MappingProxyType({})
    # The sampler of a request that names none (None: the request must name one).
    default_sampler: ClassVar[Sampler | None] = DEFAULT_SAMPLER
    # Whether its models take negative prompts (FLUX.1, guidance-distilled, has none).
    negative_prompts: ClassVar[bool] = True
    # Whether its image-to-image pipeline must be told the init image's size (else it makes
    # its default size: SD 3.5's and FLUX's); the others take the size of the image.
    img2img_takes_size: ClassVar[bool] = False
    # The dtype its models load in where the deployment says float16 (e.g. dtype = "auto" on
    # a GPU): None keeps float16.
    instead_of_float16: ClassVar[str | None] = None

    def load_dtype(self, dtype: Any) -> Any:
        """The dtype to load this family's models in, given the deployment's."""
        import torch

        if dtype == torch.float16 and self.instead_of_float16 is not None:
            return getattr(torch, self.instead_of_float16)
        return dtype

    @property
    def name(self) -> str:
        return type(self).__name__

    def pipeline_class(self, role: str) -> Any:
        """The diffusers pipeline class for `role`; NoPipeline when the family has none."""
        class_name = self.pipelines.get(role)
        if class_name is None:
            raise NoPipeline(f"{self.name} models have no {role} pipeline")
        import diffusers

        return getattr(diffusers, class_name)

    def scheduler(self, pipe: Any, sampler: Sampler | None) -> Any:
        """A new scheduler for `sampler` (None: the default one) from `pipe`'s scheduler
        config, so the model's training settings carry over and `pipe` is not changed."""
        return make_scheduler(sampler, pipe.scheduler.config, self.samplers, self.default_sampler)

    def view(self, pipe: Any, role: str, sampler: Sampler | None) -> Any:
        """A per-request pipeline for `role` that shares `pipe`'s models (no copy), with a
        scheduler of its own. `dtype=pipe.dtype`: `from_pipe` casts the view's models to the
        dtype it is given (float32 by default), and they are the shared pipeline's models; a
        family whose models mix dtypes overrides this."""
        view = self.pipeline_class(role).from_pipe(
            pipe, scheduler=self.scheduler(pipe, sampler), dtype=pipe.dtype
        )
        view.set_progress_bar_config(disable=True)
        return view

    def encode_prompt(self, pipe: Any, text: str, device: Any) -> dict[str, Any]:
        """The keyword arguments (tensor per name, one row) that stand for the prompt `text` in
        a call of `pipe`, exactly as the pipeline would encode the text itself."""
        raise NotImplementedError(f"{self.name} models take no text prompt")

    def default_negative(self, pipe: Any, positive: dict[str, Any], device: Any) -> dict[str, Any]:
        """The negative keyword arguments (`negative_...`) that `pipe` would use when called
        with the `positive` ones (from `encode_prompt`) and no negative prompt."""
        raise NotImplementedError(f"{self.name} models take no text prompt")


@functools.cache
def adapters() -> Mapping[Family, FamilyAdapter]:
    """Every adapter by family, from the `ADAPTERS` of this package's modules."""
    found: dict[Family, FamilyAdapter] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for adapter in getattr(module, "ADAPTERS", ()):
            if not isinstance(adapter, FamilyAdapter):
                raise TypeError(f"{module.__name__}.ADAPTERS holds {adapter!r}, not an adapter")
            for family in adapter.families:
                if family in found:
                    raise RuntimeError(
                        f"family {family} has two adapters: {found[family].name} and {adapter.name}"
                    )
                found[family] = adapter
    return MappingProxyType(found)


def adapter_for(family: Family) -> FamilyAdapter:
    """The adapter of `family`; UnknownFamily when no module of this package covers it."""
    found = adapters()
    try:
        return found[family]
    except (KeyError, TypeError):  # TypeError: an unhashable value is no family either
        known = ", ".join(sorted(found))
        raise UnknownFamily(
            f"no adapter for model family '{family}': the adapters in {__name__} cover "
            f"{known}; a new family needs a module there whose ADAPTERS covers it"
        ) from None
