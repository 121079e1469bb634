"""Our /openapi.json against the official v1 spec (tests/spec/stability-v1-openapi.json).

Both documents are flattened per operation into facts: for the request body and for each
response status and content type, every field (allOf / oneOf / anyOf merged, $refs resolved,
`X | None` read as X, `default: null` dropped) with its type, enum, default, range, length and
format, and for requests whether it is required. Any difference fails the test unless it is
listed in DOCUMENTED (or EXTRA_STATUSES), each of which docs/api.md ("OpenAPI differences")
explains. Descriptions and examples are not compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server

SPEC = Path(__file__).resolve().parent / "spec" / "stability-v1-openapi.json"
FACTS = (
    "type",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "format",
)
GENERATIONS = (
    "text-to-image",
    "image-to-image",
    "image-to-image/masking",
    "image-to-image/upscale",
)
EXTRA_STATUSES = {
    **{
        f"/v1/generation/{{engine_id}}/{g} post": ("202", "402", "409", "429", "503")
        for g in GENERATIONS
    },
    "/v1/engines/list get": ("403", "429"),
    "/v1/user/balance get": ("403", "429"),
    "/v1/user/account get": ("429",),
}
# Differences we mean, one line each in docs/api.md.
DOCUMENTED = {
    # Seeds are whole numbers 0..4294967295: we say integer where the spec says number.
    **{
        f"/v1/generation/{{engine_id}}/{g} post 200 application/json artifacts[].seed.type": (
            "number",
            "integer",
        )
        for g in GENERATIONS
    },
    # A prompt without a weight weighs 1.0 (the spec leaves the default unstated).
    **{
        f"/v1/generation/{{engine_id}}/{g} post request {ctype} text_prompts[].weight.default": (
            None,
            1.0,
        )
        for g, ctype in zip(
            GENERATIONS, ("application/json",) + ("multipart/form-data",) * 3, strict=True
        )
    },
    # At most 10 text prompts (the spec sets no bound; every prompt is encoded before a step).
    **{
        f"/v1/generation/{{engine_id}}/{g} post request {ctype} text_prompts.maxItems": (
            None,
            10,
        )
        for g, ctype in zip(
            GENERATIONS, ("application/json",) + ("multipart/form-data",) * 3, strict=True
        )
    },
    # The spec lists mask_source's values only in its description; we give them as an enum.
    "/v1/generation/{engine_id}/image-to-image/masking post request multipart/form-data "
    "mask_source.enum": (None, ["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]),
}


def _resolve(doc: dict[str, Any], node: Any, kind: str = "schemas") -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target = doc["components"][kind][node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _alternatives(doc: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    parts = [_resolve(doc, p) for key in ("allOf", "oneOf", "anyOf") for p in node.get(key, [])]
    return [p for p in parts if p.get("type") != "null"]


def _fields(
    doc: dict[str, Any], node: Any, out: dict[str, Any], prefix: str = "", required: bool = True
) -> None:
    node = _resolve(doc, node)
    for part in _alternatives(doc, node):
        if "properties" in part or _alternatives(doc, part):
            _fields(doc, part, out, prefix, required)
    for name, prop in node.get("properties", {}).items():
        _facts(doc, prop, out, f"{prefix}{name}", required)
    if required:
        for name in node.get("required", []):
            out[f"{prefix}{name}.required"] = True


def _facts(
    doc: dict[str, Any], prop: Any, out: dict[str, Any], where: str, required: bool = True
) -> None:
    prop = _resolve(doc, prop)
    alternatives = _alternatives(doc, prop)
    if len(alternatives) == 1 and "type" not in prop:  # X | None
        prop = {**alternatives[0], **{k: v for k, v in prop.items() if k not in ("anyOf", "oneOf")}}
    for key in FACTS:
        if key in prop and not (key == "default" and prop[key] is None):
            out[f"{where}.{key}"] = prop[key]
    if prop.get("type") == "array":
        item = _resolve(doc, prop.get("items", {}))
        if "properties" in item:
            _fields(doc, item, out, f"{where}[].", required)
        else:
            _facts(doc, item, out, f"{where}[]", required)
    elif "properties" in prop:
        _fields(doc, prop, out, f"{where}.", required)


def flatten(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """({"PATH METHOD WHAT CTYPE FIELD.FACT": value}, {"PATH METHOD": statuses}) for /v1."""
    facts: dict[str, Any] = {}
    statuses: dict[str, set[str]] = {}
    for path, operations in doc["paths"].items():
        if not path.startswith("/v1/") or path.startswith("/v1/generation/{generation_id}"):
            continue  # our extensions (generations by id) are documented on their own
        for method, operation in operations.items():
            op = f"{path} {method}"
            statuses[op] = set(operation.get("responses", {}))
            content = operation.get("requestBody", {}).get("content", {})
            for ctype, media in content.items():
                out: dict[str, Any] = {}
                _fields(doc, media["schema"], out)
                facts.update({f"{op} request {ctype} {k}": v for k, v in out.items()})
            for status, response in operation.get("responses", {}).items():
                response = _resolve(doc, response, "responses")
                for ctype, media in (response.get("content") or {}).items():
                    out = {}
                    # Which response fields are required is not compared: we always send
                    # ours, and the spec marks an Error `status` it does not define.
                    _facts(doc, media.get("schema", {}), out, "body", required=False)
                    facts.update(
                        {
                            f"{op} {status} {ctype} {k.removeprefix('body.')}": v
                            for k, v in out.items()
                        }
                    )
    return facts, statuses


# Fields of our own that the spec lacks (docs/api.md, "Extensions"): LoRA adapters, asked for
# in a generation request's `loras` and listed per engine by engines/list.
EXTENSION_FIELDS = ("loras",)


def _extension(key: str) -> bool:
    """A fact of one of our extension fields, which the official document does not have."""
    field = key.split(" ")[-1].removeprefix("body[].")
    return field.split(".")[0].split("[")[0] in EXTENSION_FIELDS


def _extra_status(key: str) -> bool:
    """A fact of one of our extra error statuses (its shape is the same Error envelope)."""
    path, method, what = key.split(" ")[:3]
    return what in EXTRA_STATUSES.get(f"{path} {method}", ())


@pytest.fixture(scope="module")
def documents(server: Server) -> tuple[dict[str, Any], dict[str, Any]]:
    with server.client() as client:
        return json.loads(SPEC.read_text()), client.get("/openapi.json").json()


def test_the_v1_operations_and_their_answers_match(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    official, ours = (flatten(d)[1] for d in documents)
    assert set(official) == set(ours)
    for op, statuses in official.items():
        assert ours[op] - statuses == set(EXTRA_STATUSES.get(op, ())), op
        assert statuses <= ours[op], op


def test_every_field_matches_or_is_documented(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    official, ours = (flatten(d)[0] for d in documents)
    differences = {
        key: (official.get(key), ours.get(key))
        for key in set(official) | set(ours)
        if official.get(key) != ours.get(key) and not _extra_status(key)
    }
    extensions = {k: v for k, v in differences.items() if _extension(k)}
    assert all(theirs is None for theirs, _ in extensions.values()), extensions
    assert len(extensions) > 2 * len(GENERATIONS)  # they are there (and in docs/api.md)
    differences = {k: v for k, v in differences.items() if k not in extensions}
    undocumented = {k: v for k, v in differences.items() if DOCUMENTED.get(k) != v}
    assert undocumented == {}
    # Every documented difference still exists (else the list and the docs are stale).
    assert set(DOCUMENTED) <= set(differences)
    # The comparison sees the fields at all: a few that must be there.
    for key in (
        "/v1/generation/{engine_id}/text-to-image post request application/json steps.default",
        "/v1/generation/{engine_id}/image-to-image post request multipart/form-data "
        "image_strength.maximum",
        "/v1/user/balance get 200 application/json credits.type",
        "/v1/generation/{engine_id}/text-to-image post 400 application/json name.type",
    ):
        assert key in official and key in ours, key
