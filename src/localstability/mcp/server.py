"""The MCP server of the tools, for either transport (Streamable HTTP at /mcp, or stdio)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    ResourceTemplate,
)

from localstability import __version__
from localstability.mcp.results import URI_TEMPLATE
from localstability.mcp.tools import ImageTools
from localstability.store.accounts import Principal

# Who calls: from the request (HTTP, authenticated per request) or from the process's key.
PrincipalOf = Callable[[ServerRequestContext[Any, Any]], Awaitable[Principal]]

INSTRUCTIONS = (
    "Stable Diffusion image generation on this server (the Stability AI REST API v1): "
    "list_available_models names the engines and which tool takes each; the other tools "
    "return images with their seeds and cost the API key's organization credits. Small results "
    "carry their PNGs; larger ones a JPEG preview and a resource link per image, whose full PNG "
    "resources/read answers while the generation's result is kept. Errors carry the REST API's "
    "envelope, {id, name, message}."
)

IMAGES = ResourceTemplate(
    name="generation-image",
    title="A generated image, full size",
    uri_template=URI_TEMPLATE,
    description="Image `index` (from 0) of a generation, as PNG, while its result is kept; "
    "the generating tools link to it when the PNGs are too large to send inline.",
    mime_type="image/png",
)


def build_server(tools: ImageTools, principal_of: PrincipalOf) -> Server[Any]:
    """A low-level MCP server: tools/list from the tools' models, tools/call to `tools`."""

    async def list_tools(
        _ctx: ServerRequestContext[Any, Any], _params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=tools.listing())

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult:
        if params.name not in tools.specs:
            # Not a tool's failure but a wrong request: a protocol error, as MCP says.
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        # Progress only for a caller that sent a progress token (watching a job's steps
        # wakes the event loop at each one).
        wants_progress = progress_token_from_params(ctx.params) is not None
        return await tools.call(
            params.name,
            params.arguments or {},
            lambda: principal_of(ctx),
            ctx.session.report_progress if wants_progress else None,
        )

    async def list_resources(
        _ctx: ServerRequestContext[Any, Any], _params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        # Results come and go with their generations: none is listed, each is linked.
        return ListResourcesResult(resources=[])

    async def list_resource_templates(
        _ctx: ServerRequestContext[Any, Any], _params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=[IMAGES])

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        return await tools.read_image(str(params.uri), lambda: principal_of(ctx))

    return Server(
        "localstability",
        version=__version__,
        title="localstability",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
    )
