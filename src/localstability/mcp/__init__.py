"""The MCP front door: five tools for AI assistants on the REST API's services.

`protocol` (tool arguments and results, from the REST wire fields), `tools` (the use cases),
`server` (the MCP server of the tools), `http` (/mcp, Streamable HTTP behind the REST
authentication) and `stdio` (`localstability mcp`).
"""
