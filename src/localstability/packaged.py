"""Find files that installed packages ship, without importing those packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dirs(name: str) -> list[Path]:
    """The folders of the installed package `name` (none when it is not installed).

    Found with importlib.util.find_spec, so the package's own imports never run (open_clip would
    pull in torchvision and timm; some model packages load weights at import).
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    return [Path(location) for location in locations]
