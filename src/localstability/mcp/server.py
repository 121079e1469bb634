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
    ListToolsResult,
    PaginatedRequestParams,
)

from localstability import __version__
from localstability.mcp.tools import ImageTools
from localstability.store.accounts import Principal

# Who calls: from the request (HTTP, authenticated per request) or from the process's key.
PrincipalOf = Callable[[ServerRequestContext[Any, Any]], Awaitable[Principal]]

INSTRUCTIONS = (
    "Stable Diffusion image generation on this server (the Stability AI REST API v1): "
    "list_available_models names the engines and which tool takes each; the other tools "
    "return PNG images with their seeds and cost the API key's organization credits. Errors "
    "carry the REST API's envelope, {id, name, message}."
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

    return Server(
        "localstability",
        version=__version__,
        title="localstability",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
