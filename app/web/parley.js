// parley.js — a small, dependency-free browser client for the Parley HTTP API.
//
// Copy this file into your app or import it from a running Parley (`/web/parley.js`). It needs only
// `fetch`, `ReadableStream`, `TextDecoder` and `crypto.getRandomValues` (every current browser, Deno, Node 20+).
//
//   import { ParleyClient, describeError } from "/web/parley.js";
//   const parley = new ParleyClient({ apiKey: "pk_…" });
//   const session = await parley.createSession({ title: "Trip planning" });
//   const turn = parley.send(session.id, "What should I pack for Lisbon?", {
//     onDelta: (text) => output.append(text),
//     onToolCall: (call) => console.log(call.phase, call.name),
//     onDone: (turn) => console.log(turn.status, turn.usage, turn.cost_usd),
//     onError: (error) => alert(describeError(error)),
//   });
//   stopButton.onclick = () => turn.cancel();
//
// Also: parley.attach(sessionId, turnId, callbacks, {lastEventId}) to re-attach (e.g. after a reload),
// parley.submitToolOutputs(…) to answer `turn.requires_action`, and the session and turn calls
// (listSessions, updateSession, deleteSession, listMessages, listTurns, getTurn, cancelTurn, search), branches
// (editMessage and regenerate stream as send does; activate, fork), exportSession and config, and files
// (uploadFile with progress, fetchFileBlob; messageInput(text, files) is a message's input with attachments).
//
// Streams are read with fetch (so the key travels in the Authorization header, never in a URL). When the
// connection drops mid-answer the client re-attaches to GET …/turns/{id}/events with Last-Event-ID and
// backoff; the server sends every later event exactly once, so the text continues without a gap or a repeat.

/**
 * @typedef {Object} Usage
 * @property {number} input_tokens
 * @property {number} cached_input_tokens
 * @property {number} output_tokens
 * @property {number} reasoning_tokens
 * @property {number} total_tokens
 */

/**
 * @typedef {Object} Turn
 * @property {string} id
 * @property {"turn"} object
 * @property {string} session_id
 * @property {string | null} [message_id]  its user message (a regenerated answer's is the message answered again)
 * @property {"queued"|"in_progress"|"requires_action"|"completed"|"incomplete"|"failed"|"cancelled"} status
 * @property {string | unknown[]} input
 * @property {string} output_text
 * @property {string[]} response_ids
 * @property {Usage | null} usage
 * @property {string | null} cost_usd   decimal string in USD; null when unknown
 * @property {{code: string, message: string} | null} error
 * @property {string} created_at
 * @property {string | null} completed_at
 * @property {number | null} ttft_ms
 * @property {string | null} stream_url  the turn's /events URL with a short-lived token (for EventSource)
 * @property {{type: "submit_tool_outputs", tool_calls: {call_id: string, name: string, arguments: string}[]} | null}
 *   [required_action]  with status requires_action: the function calls your app must answer
 * @property {Feedback | null} [feedback]  what the person thought of the answer, if they said
 */

/**
 * @typedef {Object} Feedback
 * @property {"up" | "down" | null} rating
 * @property {string | null} comment
 * @property {string} updated_at
 */

/**
 * @typedef {Object} Session
 * @property {string} id
 * @property {"session"} object
 * @property {string | null} title
 * @property {"user" | "auto" | null} title_source  who named it (`auto`: made after its first turn)
 * @property {Record<string, string>} metadata
 * @property {string} created_at
 * @property {string} updated_at
 * @property {string | null} last_turn_at
 * @property {number} turn_count
 * @property {string | null} total_cost_usd
 */

/**
 * @typedef {Object} Message
 * @property {string} id
 * @property {string} session_id
 * @property {string | null} turn_id
 * @property {"system"|"developer"|"user"|"assistant"} role
 * @property {string} content   the plain text
 * @property {object[]} items   the Responses items that make it up: input parts; reasoning summaries, function
 *   calls and outputs, built-in tool calls, message text with its annotations
 * @property {string | null} model   an assistant message's model, as served
 * @property {string | null} parent_id   the message before it on its branch (null at the top)
 * @property {Alternatives | null} alternatives   its versions (edits of a user message, answers to one message)
 * @property {string} status
 * @property {string} created_at
 */

/**
 * The versions of a message: `message_ids` in creation order, `index` (0-based) this one's place among them.
 * @typedef {Object} Alternatives
 * @property {number} index
 * @property {number} count
 * @property {string[]} message_ids
 */

/**
 * What a send or an edit carries: the input and, optionally, what to answer it with.
 * @typedef {Object} MessageBody
 * @property {string | unknown[]} input
 * @property {Record<string, string>} [prompt_variables]
 * @property {{id: string, version?: string, variables?: Record<string, string>}} [prompt]
 * @property {string} [model]
 * @property {Record<string, string>} [metadata]
 * @property {Record<string, unknown>} [options]   Responses options (text, reasoning, temperature, …)
 * @property {object[]} [tools]
 */

/**
 * What this caller may choose, for a client's pickers (`GET /v1/config`). `allowed: ["*"]` means any.
 * @typedef {Object} Config
 * @property {"config"} object
 * @property {{default: string | null, allowed: string[]}} models
 * @property {{default: string | null, allowed: string[]}} prompts
 * @property {string[]} options
 * @property {string[]} builtin_tools
 * @property {{name: string, description: string | null}[]} server_tools
 * @property {{max_message_chars: number, max_body_bytes: number, turns_per_minute: number | null,
 *   concurrent_turns: number | null, monthly_budget_usd: string | null, spent_this_month_usd: string}} limits
 */

/**
 * A session title or a message that matched a search.
 * @typedef {Object} SearchResult
 * @property {string} id   opaque: pass it as `after` for the results after this one
 * @property {"search_result"} object
 * @property {string} session_id
 * @property {string | null} session_title
 * @property {string | null} message_id   null when the session's title matched
 * @property {"system"|"developer"|"user"|"assistant" | null} role
 * @property {string} snippet   the matching text, shortened around the matches
 * @property {[number, number][]} highlights   [start, end) of each match in `snippet`, in UTF-16 code units,
 *   so `snippet.slice(start, end)` is the matched word
 * @property {string} created_at
 */

/**
 * @template T
 * @typedef {Object} List
 * @property {"list"} object
 * @property {T[]} data
 * @property {string | null} first_id
 * @property {string | null} last_id
 * @property {boolean} has_more
 */

/**
 * One raw Server-Sent Event, as the framing defines it.
 * @typedef {Object} SSEMessage
 * @property {string} id     the last `id:` seen (it carries over to later events, as in EventSource)
 * @property {string} event  the `event:` name ("message" when absent)
 * @property {string} data   the `data:` lines joined with "\n"
 * @property {number | undefined} retry  the `retry:` value (ms) when this event carried one
 */

/**
 * One Parley event: `turn.created`, every upstream Responses event verbatim, Parley's own
 * `turn.tool_call.*`, and exactly one terminal `turn.*` event.
 * @typedef {Object} ParleyEvent
 * @property {number} id      counts from 1 within the turn
 * @property {string} name    the event type, e.g. "response.output_text.delta"
 * @property {any} data       the parsed JSON payload (the raw string if it is not JSON)
 */

/**
 * A tool call as it happens: Parley's own tools (`turn.tool_call.started` / `.completed`) and the model's
 * function calls (`response.output_item.added` / `.done` with an item of type `function_call`).
 * @typedef {Object} ToolCall
 * @property {"started"|"completed"} phase
 * @property {"parley"|"function"} source  who runs it: Parley itself, or your app (a function call)
 * @property {string} call_id
 * @property {string} name
 * @property {string} [arguments]   JSON text
 * @property {string} [output]
 * @property {unknown} [error]
 * @property {number} [duration_ms]
 */

/**
 * @typedef {Object} TurnCallbacks
 * @property {(turn: Turn) => void} [onTurn]              `turn.created`: the turn's id and stream_url
 * @property {(delta: string, event: ParleyEvent) => void} [onDelta]   each `response.output_text.delta`
 * @property {(call: ToolCall, event: ParleyEvent) => void} [onToolCall]
 * @property {(turn: Turn, event: ParleyEvent) => void} [onDone]   the terminal event, whatever its status
 * @property {(error: ParleyError) => void} [onError]     an HTTP error, or the connection could not be restored
 * @property {(event: ParleyEvent) => void} [onEvent]     every event, including the ones above
 * @property {(info: {attempt: number, delayMs: number, lastEventId: number}) => void} [onReconnect]
 *   before each re-attach attempt after a dropped connection
 */

/**
 * @typedef {Object} ClientOptions
 * @property {string | (() => string | Promise<string>)} apiKey  a Parley API key or a JWT (or a function
 *   returning a fresh one)
 * @property {string} [baseUrl]   where Parley is, e.g. "https://parley.example.com" (default: this origin)
 * @property {typeof fetch} [fetch]
 * @property {typeof XMLHttpRequest} [XMLHttpRequest]  for uploads (fetch cannot report upload progress)
 * @property {number} [maxReconnects]   attempts before giving up on a dropped stream (default 10)
 * @property {number} [initialBackoffMs]  first reconnect delay, doubled each time (default 250)
 * @property {number} [maxBackoffMs]    cap of the delay (default: the server's `retry:`, else 5000)
 */

/**
 * @typedef {Object} SendOptions
 * @property {string} [idempotencyKey]  default: a fresh random UUID per send (crypto.randomUUID())
 * @property {AbortSignal} [signal]      stops listening (the turn itself goes on; use cancel() to stop it)
 */

const TERMINAL_EVENTS = new Set([
  "turn.completed",
  "turn.incomplete",
  "turn.failed",
  "turn.cancelled",
  "turn.requires_action",
]);

/** An error from Parley (the `{error: {type, code, message, param}}` envelope) or from the network. */
export class ParleyError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, type?: string, code?: string, param?: string | null,
   *          retryAfter?: number | null, requestId?: string | null, cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "ParleyError";
    /** HTTP status; 0 when the server could not be reached. */
    this.status = details.status ?? 0;
    this.type = details.type ?? (this.status ? "api_error" : "network_error");
    this.code = details.code ?? (this.status ? `http_${this.status}` : "network_error");
    this.param = details.param ?? null;
    /** Seconds to wait, from Retry-After (429, 503). */
    this.retryAfter = details.retryAfter ?? null;
    this.requestId = details.requestId ?? null;
  }
}

/**
 * An incremental parser of the text/event-stream framing (the WHATWG rules): `id`, `event`, `data`
 * (several lines joined with "\n"), `retry`, comments (`: ping`), CRLF / LF / CR line ends, and chunks
 * that split a line anywhere. An event is dispatched at its blank line; a half event at EOF is dropped.
 */
export class SSEParser {
  /**
   * @param {(message: SSEMessage) => void} onMessage
   * @param {(comment: string) => void} [onComment]
   */
  constructor(onMessage, onComment) {
    this.onMessage = onMessage;
    this.onComment = onComment;
    this.lastEventId = "";
    this.buffer = "";
    this.pendingCR = false;
    this.started = false;
    this.resetEvent();
  }

  resetEvent() {
    /** @type {string[]} */
    this.data = [];
    this.eventName = "";
    /** @type {number | undefined} */
    this.retry = undefined;
  }

  /** @param {string} text a decoded chunk */
  push(text) {
    let i = 0;
    if (!this.started && text.length) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) i = 1;
    }
    if (this.pendingCR && text.charCodeAt(i) === 10) i += 1;
    if (text.length) this.pendingCR = false;
    let start = i;
    let carried = this.buffer;
    for (; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(carried + text.slice(start, i));
      carried = "";
      if (c === 13) {
        if (i + 1 === text.length) this.pendingCR = true;
        else if (text.charCodeAt(i + 1) === 10) i += 1;
      }
      start = i + 1;
    }
    this.buffer = carried + text.slice(start);
  }

  /** @param {string} line */
  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58 /* ':' */) {
      this.onComment?.(line.slice(1).trimStart());
      return;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.eventName = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry") {
      if (/^\d+$/.test(value)) this.retry = Number(value);
    }
  }

  dispatch() {
    if (this.data.length) {
      this.onMessage({
        id: this.lastEventId,
        event: this.eventName || "message",
        data: this.data.join("\n"),
        retry: this.retry,
      });
    } else if (this.retry !== undefined) {
      // A frame with only `retry:` still sets the reconnection time.
      this.onMessage({ id: this.lastEventId, event: "", data: "", retry: this.retry });
    }
    this.resetEvent();
  }
}

/**
 * Runs a caller's callback; an exception in it is re-thrown on its own (so it shows in the console) instead
 * of being mistaken for a broken connection.
 * @param {(() => void) | undefined} fn
 */
function call(fn) {
  try {
    fn?.();
  } catch (error) {
    setTimeout(() => {
      throw error;
    });
  }
}

/** @param {number} ms @param {AbortSignal} [signal] */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(undefined);
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve(undefined);
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Waits for the browser's `online` event when it knows it is offline (no point retrying before). */
function whenOnline(/** @type {AbortSignal} */ signal) {
  const nav = /** @type {any} */ (globalThis).navigator;
  if (!nav || nav.onLine !== false || typeof globalThis.addEventListener !== "function") {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const done = () => {
      globalThis.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      resolve(undefined);
    };
    globalThis.addEventListener("online", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * A random (v4) UUID for Idempotency-Key. `crypto.randomUUID` exists only in secure contexts (https,
 * localhost); a playground opened at http://some-host:8000 still needs keys, so build one from
 * `crypto.getRandomValues`, which works everywhere.
 * @returns {string}
 */
export function newIdempotencyKey() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The ParleyError for a non-2xx response.
 * @param {Response} response
 * @returns {Promise<ParleyError>}
 */
export async function errorFromResponse(response) {
  /** @type {any} */
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const retryAfter = Number.parseFloat(response.headers.get("Retry-After") ?? "");
  return new ParleyError(String(error.message || `HTTP ${response.status}`), {
    status: response.status,
    type: error.type,
    code: error.code,
    param: error.param ?? null,
    retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
    requestId: response.headers.get("X-Request-ID"),
  });
}

/**
 * A file uploaded to Parley (`POST /v1/files`), to name in a message by its id.
 * @typedef {Object} ParleyFile
 * @property {string} id   "pfile_…"
 * @property {"file"} object
 * @property {string} filename
 * @property {number} bytes
 * @property {string} content_type
 * @property {string} created_at
 */

/**
 * The `input` of a message with files: the text, then an `input_image` part for each image and an `input_file`
 * part for any other file. Pass it as `{input: messageInput(text, files)}` to send or editMessage.
 * @param {string} text
 * @param {{id: string, content_type?: string}[]} files  ParleyFile objects (or just their ids and types)
 * @returns {{role: "user", content: object[]}[]}
 */
export function messageInput(text, files) {
  /** @type {object[]} */
  const content = text ? [{ type: "input_text", text }] : [];
  for (const file of files) {
    const kind = String(file.content_type ?? "").startsWith("image/") ? "input_image" : "input_file";
    content.push({ type: kind, file_id: file.id });
  }
  return [{ role: "user", content }];
}

/**
 * The files a stored user message carries (its `items`' `input_image` / `input_file` parts with a Parley id).
 * @param {object[] | undefined | null} items
 * @returns {{type: string, file_id: string, filename: string, content_type: string, bytes: number}[]}
 */
export function messageFiles(items) {
  /** @type {any[]} */
  const found = [];
  /** @param {any} part */
  const visit = (part) => {
    if (!part || typeof part !== "object") return;
    if ((part.type === "input_image" || part.type === "input_file") && typeof part.file_id === "string") {
      found.push(part);
    } else if (Array.isArray(part.content)) part.content.forEach(visit);
  };
  (items ?? []).forEach(visit);
  return found;
}

/**
 * Words a person understands for an error, for showing in a UI.
 * @param {unknown} error a ParleyError, or the `error` of a failed Turn (`{code, message}`)
 * @returns {string}
 */
export function describeError(error) {
  const e = /** @type {any} */ (error) || {};
  const status = typeof e.status === "number" ? e.status : undefined;
  const code = String(e.code || "");
  const wait = e.retryAfter ? ` Try again in ${Math.ceil(e.retryAfter)} second${Math.ceil(e.retryAfter) === 1 ? "" : "s"}.` : "";
  switch (code) {
    case "turn_in_progress":
      return "The assistant is still answering your previous message in this conversation. Wait for it to finish, or press Stop.";
    case "conversation_locked":
      return "This conversation is busy with another answer right now. Try again in a moment.";
    case "budget_exceeded":
      return "You have used up this month's budget, so no more messages can be sent. Ask an administrator to raise it.";
    case "idempotency_key_reused":
      return "This message clashed with an earlier one that used the same request key. Send it again.";
    case "message_too_long":
      return "That message is too long. Shorten it and send it again.";
    case "too_many_concurrent_turns":
      return `You have too many answers streaming at once. Wait for one to finish.${wait}`;
    case "upstream_timeout":
      return "The AI service took too long to answer. Try again.";
    case "upstream_disconnected":
      return "The connection to the AI service broke off before the answer was finished. Try again.";
    case "upstream_unreachable":
      return "The AI service cannot be reached right now. Try again in a little while.";
    case "interrupted":
      return "The server restarted before the answer was finished. Send the message again.";
    case "shutting_down":
      return "The server is restarting. Try again in a few seconds.";
    case "network_error":
      return "Can't reach the server. Check your internet connection and try again.";
    case "rate_limit_exceeded":
      return `The AI service is receiving too many requests right now.${wait || " Try again in a moment."}`;
    case "insufficient_quota":
      return "The AI service's account has run out of credit. Tell the administrator.";
    case "server_error":
      return "The AI service had an internal problem while answering. Try again.";
    case "max_output_tokens":
      return "The answer was cut short because it reached the length limit.";
    case "content_filter":
      return "The answer was stopped by the content filter.";
    case "file_not_found":
      return "An attached file no longer exists. Remove it and attach it again.";
    default:
      break;
  }
  switch (status) {
    case 0:
      return "Can't reach the server. Check your internet connection and try again.";
    case 401:
      return "Your API key was not accepted. Check that it is correct and has not been revoked.";
    case 402:
      return "You have used up your budget, so no more messages can be sent. Ask an administrator to raise it.";
    case 403:
      return "Your key is not allowed to do that.";
    case 404:
      return "That conversation no longer exists. It may have been deleted.";
    case 409:
      return "Something else is happening in this conversation right now. Wait a moment and try again.";
    case 413:
    case 415:
    case 422:
    case 400:
      return `The request was not accepted: ${e.message || "invalid input"}`;
    case 429:
      return `You are sending messages too quickly.${wait || " Wait a moment and try again."}`;
    case 502:
      return "The AI service returned an error instead of an answer. Try again.";
    case 503:
      return `The server is temporarily unavailable.${wait || " Try again in a moment."}`;
    case 504:
      return "The AI service took too long to answer. Try again.";
    default:
      break;
  }
  if (status && status >= 500) return "The server had a problem. Try again in a moment.";
  return e.message ? `Something went wrong: ${e.message}` : "Something went wrong. Try again.";
}

/**
 * A turn being streamed: its events arrive through the callbacks; `done` settles with the final Turn.
 */
export class TurnStream {
  /**
   * @param {ParleyClient} client
   * @param {string} sessionId
   * @param {TurnCallbacks} callbacks
   * @param {AbortSignal | undefined} signal
   */
  constructor(client, sessionId, callbacks, signal) {
    this.client = client;
    this.sessionId = sessionId;
    this.callbacks = callbacks;
    /** @type {string | null} set by `turn.created` */
    this.turnId = null;
    /** @type {Turn | null} */
    this.turn = null;
    /** The id of the last event handed to the callbacks; resuming asks for the ones after it. */
    this.lastEventId = 0;
    /** The text so far (all output_text deltas). */
    this.text = "";
    this.finished = false;
    this.cancelRequested = false;
    /** @type {number | null} the server's `retry:` (ms) */
    this.retryMs = null;
    this.controller = new AbortController();
    if (signal) {
      if (signal.aborted) this.controller.abort();
      else signal.addEventListener("abort", () => this.close(), { once: true });
    }
    /** @type {(turn: Turn) => void} */
    let resolve = () => {};
    /** @type {(error: ParleyError) => void} */
    let reject = () => {};
    /** @type {Promise<Turn>} the final Turn (terminal event), or a ParleyError */
    this.done = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Callers that only use callbacks should not see "unhandled rejection" warnings.
    this.done.catch(() => {});
    this.resolve = resolve;
    this.reject = reject;
    /** @type {Promise<Turn> | null} */
    this.cancelling = null;
  }

  /** Stop listening without stopping the turn (it runs on, and can be re-attached later). */
  close() {
    this.controller.abort();
  }

  /**
   * Ask the server to stop the turn. The stream then ends with `turn.cancelled` (the partial answer and its
   * usage are kept). Resolves with the final Turn.
   * @returns {Promise<Turn>}
   */
  cancel() {
    this.cancelRequested = true;
    if (this.cancelling) return this.cancelling;
    if (this.finished && this.turn) return Promise.resolve(this.turn);
    if (!this.turnId) {
      // Not created yet: cancel as soon as `turn.created` says which turn this is.
      return this.done;
    }
    this.cancelling = this.client.cancelTurn(this.sessionId, this.turnId);
    return this.cancelling;
  }

  /** @param {ParleyEvent} event */
  handle(event) {
    const cb = this.callbacks;
    const { name, data } = event;
    if (name === "turn.created" && data && data.turn) {
      this.turn = data.turn;
      this.turnId = data.turn.id;
      call(() => cb.onTurn?.(data.turn));
      if (this.cancelRequested && !this.cancelling) this.cancel().catch(() => {});
    }
    call(() => cb.onEvent?.(event));
    if (name === "response.output_text.delta" && typeof data?.delta === "string") {
      this.text += data.delta;
      call(() => cb.onDelta?.(data.delta, event));
    } else if (name === "turn.tool_call.started" || name === "turn.tool_call.completed") {
      const phase = name.endsWith("started") ? "started" : "completed";
      call(() => cb.onToolCall?.({ ...data, phase, source: "parley" }, event));
    } else if (
      (name === "response.output_item.added" || name === "response.output_item.done") &&
      data?.item?.type === "function_call"
    ) {
      const item = data.item;
      /** @type {ToolCall} */
      const toolCall = {
        phase: name.endsWith("added") ? "started" : "completed",
        source: "function",
        call_id: item.call_id,
        name: item.name,
        arguments: item.arguments,
      };
      call(() => cb.onToolCall?.(toolCall, event));
    } else if (TERMINAL_EVENTS.has(name) && data?.turn) {
      this.finished = true;
      this.turn = data.turn;
      call(() => cb.onDone?.(data.turn, event));
      this.resolve(data.turn);
    }
  }

  /** @param {ParleyError} error */
  fail(error) {
    this.finished = true;
    call(() => this.callbacks.onError?.(error));
    this.reject(error);
  }
}

export class ParleyClient {
  /** @param {ClientOptions} options */
  constructor(options) {
    this.apiKey = options.apiKey;
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.XMLHttpRequest = options.XMLHttpRequest ?? globalThis.XMLHttpRequest;
    this.maxReconnects = options.maxReconnects ?? 10;
    this.initialBackoffMs = options.initialBackoffMs ?? 250;
    this.maxBackoffMs = options.maxBackoffMs ?? null;
  }

  /** @returns {Promise<Record<string, string>>} */
  async authHeaders() {
    const key = typeof this.apiKey === "function" ? await this.apiKey() : this.apiKey;
    return { Authorization: `Bearer ${key}` };
  }

  /**
   * Any JSON call of the API; throws ParleyError on a non-2xx answer or a network failure.
   * @param {string} method
   * @param {string} path  e.g. "/v1/sessions"
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async request(method, path, body) {
    /** @type {Record<string, string>} */
    const headers = { ...(await this.authHeaders()), Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await this.fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (cause) {
      throw new ParleyError("The server could not be reached.", { cause });
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response.json();
  }

  /**
   * @param {{limit?: number, after?: string, order?: "asc"|"desc", q?: string}} [query]
   * @returns {string}
   */
  static query(query = {}) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) if (value !== undefined) params.set(name, String(value));
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  /**
   * @param {{limit?: number, after?: string, order?: "asc"|"desc", q?: string}} [query]  q: only the sessions
   *   whose title or messages match these words
   * @returns {Promise<List<Session>>}
   */
  listSessions(query) {
    return this.request("GET", `/v1/sessions${ParleyClient.query(query)}`);
  }

  /**
   * Find words in your session titles and messages, best match first.
   * @param {string} q
   * @param {{limit?: number, after?: string}} [query]  after: a result's `id`, for the results after it
   * @returns {Promise<List<SearchResult>>}
   */
  search(q, query = {}) {
    return this.request("GET", `/v1/search${ParleyClient.query({ ...query, q })}`);
  }

  /**
   * @param {{title?: string, metadata?: Record<string, string>, prompt?: {id: string, version?: string,
   *          variables?: Record<string, string>}, model?: string,
   *          messages?: {role: string, content: string}[]}} [body]
   * @returns {Promise<Session>}
   */
  createSession(body = {}) {
    return this.request("POST", "/v1/sessions", body);
  }

  /** @param {string} sessionId @returns {Promise<Session>} */
  getSession(sessionId) {
    return this.request("GET", `/v1/sessions/${encodeURIComponent(sessionId)}`);
  }

  /** @param {string} sessionId @param {{title?: string | null, metadata?: Record<string, string>}} changes */
  updateSession(sessionId, changes) {
    return /** @type {Promise<Session>} */ (
      this.request("PATCH", `/v1/sessions/${encodeURIComponent(sessionId)}`, changes)
    );
  }

  /** @param {string} sessionId @returns {Promise<{id: string, deleted: true}>} */
  deleteSession(sessionId) {
    return this.request("DELETE", `/v1/sessions/${encodeURIComponent(sessionId)}`);
  }

  /** @param {string} sessionId @param {{limit?: number, after?: string, order?: "asc"|"desc"}} [query]
   *  @returns {Promise<List<Message>>} */
  listMessages(sessionId, query) {
    return this.request("GET", `/v1/sessions/${encodeURIComponent(sessionId)}/messages${ParleyClient.query(query)}`);
  }

  /** @param {string} sessionId @param {{limit?: number, after?: string, order?: "asc"|"desc"}} [query]
   *  @returns {Promise<List<Turn>>} */
  listTurns(sessionId, query) {
    return this.request("GET", `/v1/sessions/${encodeURIComponent(sessionId)}/turns${ParleyClient.query(query)}`);
  }

  /** @param {string} sessionId @param {string} turnId @returns {Promise<Turn>} */
  getTurn(sessionId, turnId) {
    return this.request("GET", `${this.turnPath(sessionId, turnId)}`);
  }

  /** @param {string} sessionId @param {string} turnId @returns {Promise<Turn>} */
  cancelTurn(sessionId, turnId) {
    return this.request("POST", `${this.turnPath(sessionId, turnId)}/cancel`);
  }

  /**
   * Rate a turn's answer, replacing any earlier rating (null and no comment takes it back).
   * @param {string} sessionId @param {string} turnId @param {"up" | "down" | null} rating @param {string} [comment]
   * @returns {Promise<Turn>}
   */
  rateTurn(sessionId, turnId, rating, comment) {
    return this.request("PUT", `${this.turnPath(sessionId, turnId)}/feedback`, { rating, comment });
  }

  /**
   * Make the branch through a message the active one (down to its most recent leaf).
   * @param {string} sessionId
   * @param {string} messageId  e.g. one of a message's `alternatives.message_ids`
   * @param {{limit?: number, order?: "asc"|"desc"}} [query]
   * @returns {Promise<List<Message>>} the now active branch, as listMessages lists it
   */
  activate(sessionId, messageId, query) {
    const path = `/v1/sessions/${encodeURIComponent(sessionId)}/messages/${encodeURIComponent(messageId)}/activate`;
    return this.request("POST", `${path}${ParleyClient.query(query)}`);
  }

  /**
   * A new session whose history is the active branch up to and including `message_id` (default: all of it).
   * @param {string} sessionId
   * @param {{message_id?: string, title?: string}} [body]
   * @returns {Promise<Session>}
   */
  fork(sessionId, body = {}) {
    return this.request("POST", `/v1/sessions/${encodeURIComponent(sessionId)}/fork`, body);
  }

  /**
   * Download a session: its active branch (or every branch) with items, and its turns with usage and cost.
   * @param {string} sessionId
   * @param {{format?: "json" | "markdown", branches?: "active" | "all"}} [query]
   * @returns {Promise<{blob: Blob, filename: string, contentType: string}>}  filename: the server's
   *   Content-Disposition name (else `<session id>.json` / `.md`)
   */
  async exportSession(sessionId, query = {}) {
    const path = `/v1/sessions/${encodeURIComponent(sessionId)}/export${ParleyClient.query(query)}`;
    let response;
    try {
      response = await this.fetch(this.baseUrl + path, { method: "GET", headers: await this.authHeaders() });
    } catch (cause) {
      throw new ParleyError("The server could not be reached.", { cause });
    }
    if (!response.ok) throw await errorFromResponse(response);
    const disposition = response.headers.get("Content-Disposition") ?? "";
    const named = /filename\*=UTF-8''([^;]+)|filename="([^"]+)"|filename=([^;]+)/i.exec(disposition);
    let filename = `${sessionId}.${query.format === "markdown" ? "md" : "json"}`;
    if (named) {
      try {
        filename = named[1] ? decodeURIComponent(named[1]) : (named[2] ?? named[3]).trim();
      } catch {
        // a malformed name: keep the session id's
      }
    }
    const contentType = response.headers.get("Content-Type") ?? "application/octet-stream";
    return { blob: await response.blob(), filename, contentType };
  }

  /**
   * Upload a file (`POST /v1/files`, multipart field `file`). Uses XMLHttpRequest, since fetch cannot report
   * upload progress. Throws ParleyError (413 too large or over quota, 415 a type Parley does not take).
   * @param {Blob | File} file
   * @param {{filename?: string, onProgress?: (progress: {loaded: number, total: number}) => void,
   *          signal?: AbortSignal}} [options]
   * @returns {Promise<ParleyFile>}
   */
  async uploadFile(file, options = {}) {
    const headers = { ...(await this.authHeaders()), Accept: "application/json" };
    const form = new FormData();
    const name = options.filename ?? /** @type {any} */ (file).name ?? "file";
    form.append("file", file, name);
    return new Promise((resolve, reject) => {
      const xhr = new this.XMLHttpRequest();
      xhr.open("POST", `${this.baseUrl}/v1/files`);
      for (const [header, value] of Object.entries(headers)) xhr.setRequestHeader(header, value);
      let sent = 0;
      let size = file.size;
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) size = event.total;
        sent = event.loaded;
        call(() => options.onProgress?.({ loaded: event.loaded, total: size }));
      });
      xhr.addEventListener("load", () => {
        // All of it went, whether or not the browser said so on the way (some never report the last bytes).
        if (sent < size) call(() => options.onProgress?.({ loaded: size, total: size }));
        const response = new Response(xhr.status === 204 ? null : xhr.responseText, {
          status: xhr.status,
          headers: { "Content-Type": xhr.getResponseHeader("Content-Type") ?? "application/json" },
        });
        const requestId = xhr.getResponseHeader("X-Request-ID");
        const retryAfter = xhr.getResponseHeader("Retry-After");
        if (requestId) response.headers.set("X-Request-ID", requestId);
        if (retryAfter) response.headers.set("Retry-After", retryAfter);
        if (response.ok) response.json().then(resolve, reject);
        else errorFromResponse(response).then(reject, reject);
      });
      xhr.addEventListener("error", () => reject(new ParleyError("The server could not be reached.")));
      xhr.addEventListener("abort", () =>
        reject(new ParleyError("The upload was cancelled.", { code: "upload_cancelled" })),
      );
      if (options.signal?.aborted) {
        reject(new ParleyError("The upload was cancelled.", { code: "upload_cancelled" }));
        return;
      }
      options.signal?.addEventListener("abort", () => xhr.abort(), { once: true });
      xhr.send(form);
    });
  }

  /**
   * Where a file's bytes are (`GET /v1/files/{id}/content`). It needs the Authorization header, so an `<img>`
   * cannot load it directly: use fetchFileBlob.
   * @param {string} fileId
   */
  fileContentUrl(fileId) {
    return `${this.baseUrl}/v1/files/${encodeURIComponent(fileId)}/content`;
  }

  /**
   * A file's bytes, fetched with the key (e.g. `URL.createObjectURL(await parley.fetchFileBlob(id))` for a
   * thumbnail; revoke it when done).
   * @param {string} fileId
   * @returns {Promise<Blob>}
   */
  async fetchFileBlob(fileId) {
    let response;
    try {
      response = await this.fetch(this.fileContentUrl(fileId), { headers: await this.authHeaders() });
    } catch (cause) {
      throw new ParleyError("The server could not be reached.", { cause });
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response.blob();
  }

  /**
   * What this caller may choose (models, prompts, options, tools) and the limits that apply to them.
   * @returns {Promise<Config>}
   */
  config() {
    return this.request("GET", "/v1/config");
  }

  /** @param {string} sessionId @param {string} turnId */
  turnPath(sessionId, turnId) {
    return `/v1/sessions/${encodeURIComponent(sessionId)}/turns/${encodeURIComponent(turnId)}`;
  }

  /**
   * Send a message and stream the answer. Returns at once; events arrive through the callbacks.
   * @param {string} sessionId
   * @param {string | MessageBody} message
   * @param {TurnCallbacks} [callbacks]
   * @param {SendOptions} [options]
   * @returns {TurnStream}
   */
  send(sessionId, message, callbacks = {}, options = {}) {
    const body = typeof message === "string" ? { input: message } : message;
    return this.startTurn(sessionId, `/v1/sessions/${encodeURIComponent(sessionId)}/messages`, body, callbacks, options);
  }

  /**
   * Send `message` in place of one of the session's user messages (any of them, not only the last): a new branch
   * goes on from just before it, and its answer streams as a send's does. The earlier version is kept (see
   * `Message.alternatives` and `activate`).
   * @param {string} sessionId
   * @param {string} messageId  a user message of the session
   * @param {string | MessageBody} message
   * @param {TurnCallbacks} [callbacks]
   * @param {SendOptions} [options]
   * @returns {TurnStream}
   */
  editMessage(sessionId, messageId, message, callbacks = {}, options = {}) {
    const body = typeof message === "string" ? { input: message } : message;
    const path = `/v1/sessions/${encodeURIComponent(sessionId)}/messages/${encodeURIComponent(messageId)}/edit`;
    return this.startTurn(sessionId, path, body, callbacks, options);
  }

  /**
   * Answer a turn's user message again, as a new turn on a new branch, and stream it as a send's answer.
   * @param {string} sessionId
   * @param {string} turnId
   * @param {{options?: Record<string, unknown>}} [body]  Responses options for this answer
   * @param {TurnCallbacks} [callbacks]
   * @param {SendOptions} [options]
   * @returns {TurnStream}
   */
  regenerate(sessionId, turnId, body = {}, callbacks = {}, options = {}) {
    return this.startTurn(sessionId, `${this.turnPath(sessionId, turnId)}/regenerate`, body, callbacks, options);
  }

  /**
   * POST a turn-starting body to `path` with `stream: true` and an Idempotency-Key, and stream the turn.
   * @param {string} sessionId
   * @param {string} path
   * @param {object} body
   * @param {TurnCallbacks} callbacks
   * @param {SendOptions} options
   * @returns {TurnStream}
   */
  startTurn(sessionId, path, body, callbacks, options) {
    const stream = new TurnStream(this, sessionId, callbacks, options.signal);
    const key = options.idempotencyKey ?? newIdempotencyKey();
    this.run(stream, async () => ({
      method: "POST",
      url: this.baseUrl + path,
      headers: {
        ...(await this.authHeaders()),
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        "Idempotency-Key": key,
      },
      body: JSON.stringify({ ...body, stream: true }),
    }));
    return stream;
  }

  /**
   * Answer the function calls of a turn that ended with `turn.requires_action` (see `turn.required_action`)
   * and stream the rest of it; its event ids continue where that stream stopped.
   * @param {string} sessionId
   * @param {string} turnId
   * @param {{call_id: string, output: string}[]} toolOutputs
   * @param {TurnCallbacks} [callbacks]
   * @param {{lastEventId?: number, signal?: AbortSignal}} [options]  lastEventId: the id of the
   *   `turn.requires_action` event (the previous TurnStream's `lastEventId`), so a resume after a dropped
   *   connection does not replay the turn's earlier events
   * @returns {TurnStream}
   */
  submitToolOutputs(sessionId, turnId, toolOutputs, callbacks = {}, options = {}) {
    const stream = new TurnStream(this, sessionId, callbacks, options.signal);
    stream.turnId = turnId;
    stream.lastEventId = options.lastEventId ?? 0;
    this.run(stream, async () => ({
      method: "POST",
      url: `${this.baseUrl}${this.turnPath(sessionId, turnId)}/tool_outputs`,
      headers: { ...(await this.authHeaders()), "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ tool_outputs: toolOutputs, stream: true }),
    }));
    return stream;
  }

  /**
   * Attach to a turn that is running (or has ended, within the resume window), after event `lastEventId`.
   * @param {string} sessionId
   * @param {string} turnId
   * @param {TurnCallbacks} [callbacks]
   * @param {{lastEventId?: number, signal?: AbortSignal}} [options]
   * @returns {TurnStream}
   */
  attach(sessionId, turnId, callbacks = {}, options = {}) {
    const stream = new TurnStream(this, sessionId, callbacks, options.signal);
    stream.turnId = turnId;
    stream.lastEventId = options.lastEventId ?? 0;
    this.run(stream, () => this.resumeRequest(stream));
    return stream;
  }

  /** @param {TurnStream} stream */
  async resumeRequest(stream) {
    return {
      method: "GET",
      url: `${this.baseUrl}${this.turnPath(stream.sessionId, /** @type {string} */ (stream.turnId))}/events`,
      headers: {
        ...(await this.authHeaders()),
        Accept: "text/event-stream",
        "Last-Event-ID": String(stream.lastEventId),
      },
      body: undefined,
    };
  }

  /**
   * Open the first request, read it, and re-attach after network failures until a terminal event.
   * @param {TurnStream} stream
   * @param {() => Promise<{method: string, url: string, headers: Record<string, string>, body?: string}>} first
   */
  async run(stream, first) {
    let attempt = 0;
    let makeRequest = first;
    const signal = stream.controller.signal;
    while (!signal.aborted) {
      const before = stream.lastEventId;
      /** @type {ParleyError | null} */
      let failure = null;
      try {
        const request = await makeRequest();
        const response = await this.fetch(request.url, {
          method: request.method,
          headers: request.headers,
          body: request.body,
          signal,
          cache: "no-store",
        });
        if (response.status === 204) {
          // The turn has ended and nothing is after lastEventId: read the stored turn.
          const turn = await this.getTurn(stream.sessionId, /** @type {string} */ (stream.turnId));
          stream.handle({ id: stream.lastEventId, name: `turn.${turn.status}`, data: { turn } });
          if (!stream.finished) stream.fail(new ParleyError("The turn has no more events.", { status: 204 }));
          return;
        }
        if (!response.ok) {
          const error = await errorFromResponse(response);
          // A POST answered with an error never started a turn; a resume only retries passing trouble.
          const passing = request.method === "GET" && (error.status === 429 || error.status >= 500);
          if (!passing) {
            stream.fail(error);
            return;
          }
          failure = error;
        } else {
          await this.read(stream, /** @type {ReadableStream<Uint8Array>} */ (response.body));
          if (stream.finished) return;
          failure = new ParleyError("The stream ended before the turn did.");
        }
      } catch (cause) {
        if (signal.aborted) return;
        failure = cause instanceof ParleyError ? cause : new ParleyError("The connection was lost.", { cause });
      }
      if (stream.finished || signal.aborted) return;
      // Progress resets the budget of attempts: only consecutive failures count.
      attempt = stream.lastEventId > before ? 1 : attempt + 1;
      if (attempt > this.maxReconnects) {
        stream.fail(failure);
        return;
      }
      // Before `turn.created` the turn's id is unknown: the POST is repeated with the same Idempotency-Key,
      // which returns the same turn's stream (events already seen are skipped), never a second turn.
      if (stream.turnId) makeRequest = () => this.resumeRequest(stream);
      const cap = this.maxBackoffMs ?? stream.retryMs ?? 5000;
      let delay = Math.min(cap, this.initialBackoffMs * 2 ** (attempt - 1));
      delay = Math.round(delay * (0.8 + Math.random() * 0.4));
      if (failure.retryAfter) delay = Math.max(delay, failure.retryAfter * 1000);
      const info = { attempt, delayMs: delay, lastEventId: stream.lastEventId };
      call(() => stream.callbacks.onReconnect?.(info));
      await sleep(delay, signal);
      await whenOnline(signal);
    }
  }

  /**
   * Read one response body to its end, handing each new event to the stream.
   * @param {TurnStream} stream
   * @param {ReadableStream<Uint8Array>} body
   */
  async read(stream, body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser((message) => {
      if (message.retry !== undefined) stream.retryMs = message.retry;
      if (!message.event) return;
      const id = Number(message.id);
      // Exactly-once: whatever a replayed stream sends again is skipped.
      if (Number.isFinite(id) && id > 0) {
        if (id <= stream.lastEventId) return;
        stream.lastEventId = id;
      }
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        data = message.data;
      }
      stream.handle({ id, name: message.event, data });
    });
    try {
      while (!stream.finished) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      if (stream.finished) reader.cancel().catch(() => {});
    }
  }
}
