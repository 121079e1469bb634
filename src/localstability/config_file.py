"""Edits of the operator's TOML file that `localstability models add|remove` makes: one
`[engines.ID]` table added or removed, the rest of the file (comments, order) kept as it was
(tomlkit), and nothing written unless the file then loads as valid settings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from localstability.config import load_settings


def _table(values: dict[str, Any]) -> Table:
    table = tomlkit.table()
    for name, value in values.items():
        if value is not None:
            table[name] = value
    return table


def engine_table(engine_id: str, values: dict[str, Any]) -> str:
    """The TOML text of one engine's table (what `models add` would write), with its header."""
    return f"[engines.{engine_id}]\n" + _table(values).as_string()


def _write(path: Path, document: tomlkit.TOMLDocument) -> None:
    """Write `document` over `path` once it loads as valid settings (ValueError otherwise)."""
    handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".toml")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(tomlkit.dumps(document))
        from localstability.service.tasks import deployment_catalogue

        # pydantic's ValidationError is a ValueError too.
        deployment_catalogue(load_settings(scratch))
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def _engines(document: tomlkit.TOMLDocument) -> Table:
    if "engines" not in document:
        document["engines"] = tomlkit.table(is_super_table=True)
    engines = document["engines"]
    assert isinstance(engines, Table)
    return engines


def add_engine(path: Path, engine_id: str, values: dict[str, Any]) -> None:
    """Add the table `[engines.ENGINE_ID]` with `values` (None values left out). ValueError
    when the engine has a table already, or when the file would not load."""
    document = tomlkit.parse(path.read_text())
    engines = _engines(document)
    if engine_id in engines:
        raise ValueError(f"engine {engine_id} is in {path} already: remove it first")
    engines[engine_id] = _table(values)
    _write(path, document)


def remove_engine(path: Path, engine_id: str) -> None:
    """Remove the table `[engines.ENGINE_ID]`. KeyError when the file has none."""
    document = tomlkit.parse(path.read_text())
    engines = document.get("engines")
    if engines is None or engine_id not in engines:
        raise KeyError(engine_id)
    del engines[engine_id]
    _write(path, document)
