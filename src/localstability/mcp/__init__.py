"""The MCP front door: five tools for AI assistants on the REST API's services.

`protocol` (tool arguments and results, from the REST wire fields), `tools` (the use cases),
`results` (images as inline PNGs or previews and links), `server` (the MCP server of the tools
and the image resources), `http` (/mcp, Streamable HTTP behind the REST
authentication) and `stdio` (`localstability mcp`).
"""
