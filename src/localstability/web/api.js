// A small client of the public REST API (docs/api.md): the key goes in an Authorization
// header, each failure becomes an ApiError carrying the error envelope's name and message.

export class ApiError extends Error {
  constructor(status, name, message) {
    super(message);
    this.status = status;
    this.name = name;
  }

  toString() {
    return `${this.name}: ${this.message}`;
  }
}

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function finished(view) {
  return FINISHED.has(view.status);
}

// The error of a response that is not OK, from its {id, name, message} envelope.
async function failure(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.name === "string" && typeof body.message === "string") {
      return new ApiError(response.status, body.name, body.message);
    }
  } catch {
    // not JSON: said below
  }
  return new ApiError(response.status, `http_${response.status}`, text.slice(0, 300));
}

// fetch(path, init), its failures thrown as ApiErrors: no answer, or an error envelope.
export async function send(path, init = {}) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network_error", `the server could not be reached (${error.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export class Client {
  constructor(key) {
    this.key = key;
  }

  request(method, path, { json, form, headers = {}, signal } = {}) {
    const init = { method, signal, headers: { Authorization: `Bearer ${this.key}`, ...headers } };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form; // the browser writes the multipart boundary
    }
    return send(path, init);
  }

  async json(method, path, options) {
    return (await this.request(method, path, options)).json();
  }

  engines() {
    return this.json("GET", "/v1/engines/list");
  }

  async balance() {
    return (await this.json("GET", "/v1/user/balance")).credits;
  }

  // A generation in async mode (Prefer: respond-async): its status body, with its id.
  submit(engineId, task, body) {
    const options = { headers: { Accept: "application/json", Prefer: "respond-async" } };
    if (body instanceof FormData) options.form = body;
    else options.json = body;
    return this.json("POST", `/v1/generation/${encodeURIComponent(engineId)}/${task}`, options);
  }

  // The generation's status bodies from its text/event-stream, until it has ended.
  // EventSource can't send an Authorization header, so the stream is read with fetch.
  async *events(generationId, signal) {
    const path = `/v1/generation/${encodeURIComponent(generationId)}/events`;
    const response = await this.request("GET", path, {
      headers: { Accept: "text/event-stream" },
      signal,
    });
    for await (const event of serverSentEvents(response.body)) {
      if (event.type !== "status") continue;
      const view = JSON.parse(event.data);
      yield view;
      if (finished(view)) return;
    }
  }

  // GET /v1/generation/{id}: {status} while it is queued or running (202), else
  // {artifacts}; its error envelope (e.g. 409 generation_cancelled) is thrown.
  async result(generationId) {
    const path = `/v1/generation/${encodeURIComponent(generationId)}`;
    const response = await this.request("GET", path, { headers: { Accept: "application/json" } });
    const body = await response.json();
    return response.status === 202 ? { status: body } : { artifacts: body.artifacts };
  }

  cancel(generationId) {
    return this.json("DELETE", `/v1/generation/${encodeURIComponent(generationId)}`);
  }
}

// The events of a text/event-stream body (the WHATWG format: fields `event` and `data`,
// events ended by a blank line, comments starting with ':'), as {type, data}.
export async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  let endedWithCR = false; // a CRLF split across two chunks is one line break
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const chunk = endedWithCR && value.startsWith("\n") ? value.slice(1) : value;
      endedWithCR = chunk.endsWith("\r");
      buffer += chunk;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an unfinished line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { type, data: data.join("\n") };
          type = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
