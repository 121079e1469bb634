// The official TypeScript MCP SDK (npm @modelcontextprotocol/sdk) against our /mcp endpoint,
// with its default settings, summarised as ONE JSON line on stdout.
//
// usage: node mcp_client.mjs URL KEY ACTION [JSON]
//   list            tools/list, and each tool's input and output schema compiled by Ajv 8 in
//                   strict mode (draft-07 `Ajv` and `Ajv2020`, standard formats from ajv-formats)
//                   -> {"ok": true, "tools": [names], "schema_errors": {"tool/input/draft7": msg}}
//   call {"name", "arguments"}
//                   tools/call, then resources/read of every resource_link in the result
//                   -> {"ok": true, "is_error": bool, "structured": {...}, "content": [block],
//                       "error_text": "..."}; a block: {"type", "mime_type", "bytes", "width",
//                       "height", "sha256"} (images and read links) or {"type": "text"}
//   connect         initialize only (a bad key fails here) -> {"ok": true}
// failure: {"ok": false, "error": "<message>", "error_type": "...", "code": <number|null>}, exit 1.

import { createHash } from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import Ajv from "ajv";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const JPEG_SIGNATURE = Buffer.from([0xff, 0xd8, 0xff]);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Width and height of a PNG (its IHDR) or a JPEG (its first SOFn marker), else nulls.
function imageSize(buf) {
  if (buf.length >= 24 && buf.subarray(0, 8).equals(PNG_SIGNATURE)) {
    return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
  }
  if (buf.subarray(0, 3).equals(JPEG_SIGNATURE)) {
    let at = 2;
    while (at + 9 < buf.length && buf[at] === 0xff) {
      const marker = buf[at + 1];
      const length = buf.readUInt16BE(at + 2);
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { width: buf.readUInt16BE(at + 7), height: buf.readUInt16BE(at + 5) };
      }
      at += 2 + length;
    }
  }
  return { width: null, height: null };
}

function describeBytes(type, mimeType, base64) {
  const buf = Buffer.from(base64, "base64");
  return {
    type,
    mime_type: mimeType,
    bytes: buf.length,
    ...imageSize(buf),
    sha256: createHash("sha256").update(buf).digest("hex"),
  };
}

function strictValidators() {
  const draft7 = new Ajv({ strict: true, allErrors: true });
  const draft2020 = new Ajv2020({ strict: true, allErrors: true });
  addFormats(draft7);
  addFormats(draft2020);
  return { draft7, draft2020 };
}

async function connect(url, key) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
  });
  const client = new Client({ name: "localstability-tests", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

async function list(client) {
  const { tools } = await client.listTools();
  const schemaErrors = {};
  for (const tool of tools) {
    const schemas = { input: tool.inputSchema, output: tool.outputSchema };
    for (const [which, schema] of Object.entries(schemas)) {
      if (schema === undefined) continue;
      // A fresh pair per schema: schemas carry their own $defs and no $id.
      for (const [draft, ajv] of Object.entries(strictValidators())) {
        try {
          ajv.compile(schema);
        } catch (error) {
          schemaErrors[`${tool.name}/${which}/${draft}`] = String(error?.message ?? error);
        }
      }
    }
  }
  return { ok: true, tools: tools.map((t) => t.name), schema_errors: schemaErrors };
}

async function call(client, request) {
  const result = await client.callTool({ name: request.name, arguments: request.arguments });
  const content = [];
  let errorText = null;
  for (const block of result.content) {
    if (block.type === "image") {
      content.push(describeBytes("image", block.mimeType, block.data));
    } else if (block.type === "resource_link") {
      const read = await client.readResource({ uri: block.uri });
      const blob = read.contents[0];
      content.push({
        ...describeBytes("resource_link", blob.mimeType, blob.blob),
        uri: block.uri,
        link_mime_type: block.mimeType,
        link_size: block.size ?? null,
      });
    } else {
      content.push({ type: block.type });
      if (block.type === "text" && result.isError) errorText = block.text;
    }
  }
  return {
    ok: true,
    is_error: Boolean(result.isError),
    structured: result.structuredContent ?? null,
    content,
    error_text: errorText,
  };
}

async function main() {
  const [url, key, action, json] = process.argv.slice(2);
  if (!url || !key || !action) throw new Error("usage: node mcp_client.mjs URL KEY ACTION [JSON]");
  const client = await connect(url, key);
  try {
    if (action === "connect") return { ok: true };
    if (action === "list") return await list(client);
    if (action === "call") return await call(client, JSON.parse(json));
    throw new Error(`unknown action ${action}`);
  } finally {
    await client.close();
  }
}

try {
  emit(await main());
} catch (error) {
  emit({
    ok: false,
    error: String(error?.message ?? error),
    error_type: error?.name ?? typeof error,
    code: typeof error?.code === "number" ? error.code : null,
  });
  process.exitCode = 1;
}
