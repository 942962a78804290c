// The Parley playground: sessions in a sidebar, a chat column, a composer. Talks to the API only through
// parley.js; model text reaches the page only through markdown.js (DOM nodes, never HTML strings).

import { ParleyClient, describeError, messageFiles, messageInput } from "./parley.js";
import { renderMarkdown } from "./markdown.js";
import { exactCost, formatCost, formatCount } from "./format.js";

const KEY_STORAGE = "parley.apiKey";
const IN_FLIGHT = new Set(["queued", "in_progress"]);
const PAGE_LIMIT = 100;
const MAX_PAGES = 20;
const COPIED_FOR_MS = 1500;
const SEARCH_DELAY_MS = 250;
const SEARCH_LIMIT = 20;

/** @param {string} id @returns {any} */
const $ = (id) => /** @type {any} */ (document.getElementById(id));

const ui = {
  app: $("app"),
  sidebar: $("sidebar"),
  backdrop: $("backdrop"),
  menu: $("menu"),
  sessionList: $("session-list"),
  sessionEmpty: $("session-empty"),
  newSession: $("new-session"),
  usage: $("usage-summary"),
  changeKey: $("change-key"),
  keyLabel: $("key-label"),
  title: $("session-title"),
  meta: $("session-meta"),
  messages: $("messages"),
  thread: $("thread"),
  error: $("error"),
  errorText: $("error-text"),
  errorClose: $("error-close"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyError: $("key-error"),
  keyForget: $("key-forget"),
  renameDialog: $("rename-dialog"),
  renameForm: $("rename-form"),
  renameInput: $("rename-input"),
  renameCancel: $("rename-cancel"),
  confirmDialog: $("confirm-dialog"),
  confirmForm: $("confirm-form"),
  confirmText: $("confirm-text"),
  confirmCancel: $("confirm-cancel"),
  searchForm: $("search-form"),
  searchInput: $("search-input"),
  searchResults: $("search-results"),
  searchStatus: $("search-status"),
  searchList: $("search-list"),
  searchMore: $("search-more"),
  chatActions: $("chat-actions"),
  exportMenu: $("export-menu"),
  pickers: $("pickers"),
  modelPicker: $("model-picker"),
  promptPicker: $("prompt-picker"),
  chat: $("chat"),
  attach: $("attach"),
  fileInput: $("file-input"),
  attachments: $("attachments"),
};

/**
 * @typedef {import("./parley.js").Session} Session
 * @typedef {import("./parley.js").Turn} Turn
 * @typedef {import("./parley.js").Message} Message
 * @typedef {import("./parley.js").TurnStream} TurnStream
 * @typedef {import("./parley.js").ToolCall} ToolCall
 * @typedef {import("./parley.js").SearchResult} SearchResult
 * @typedef {import("./parley.js").Config} Config
 * @typedef {import("./parley.js").ParleyFile} ParleyFile
 * @typedef {{filename: string, content_type: string, bytes: number, id?: string}} Shown  a file as a message shows it
 * @typedef {{file: File, chip: HTMLElement, uploaded: ParleyFile | null, done: Promise<ParleyFile | null>,
 *   controller: AbortController}} Pending  an attachment in the composer, uploading or uploaded
 */

const state = {
  client: new ParleyClient({ apiKey: () => localStorage.getItem(KEY_STORAGE) ?? "" }),
  /** @type {Session[]} */
  sessions: [],
  /** @type {string | null} */
  sessionId: null,
  /** @type {TurnStream | null} the answer being streamed into the open session */
  stream: null,
  /** Bumped on every session switch, so late answers for an old one are dropped. */
  generation: 0,
  /** @type {Promise<Session | null> | null} a "New chat" on its way */
  creating: null,
  /** Bumped on every search typed, so that an older search's answer never replaces a newer one's. */
  searchGeneration: 0,
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  searchTimer: undefined,
  /** @type {Config | null} what this caller may choose (GET /v1/config), for the model and prompt pickers */
  config: null,
  /** @type {Pending[]} the composer's attachments, for the next message */
  attachments: [],
  /** @type {Map<string, Promise<string>>} image thumbnails (data: URLs, which the page's CSP allows) by file id */
  thumbnails: new Map(),
};

// ---------------------------------------------------------------- small helpers

/**
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 * @returns {HTMLElement}
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** @param {string} name @returns {SVGSVGElement} */
function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.appendChild(use);
  return svg;
}

/** A cost as a person reads it, the exact figure on hover. @param {string | null | undefined} value */
function costView(value) {
  const node = el("span", "cost", formatCost(value));
  node.title = exactCost(value);
  return node;
}

/**
 * A session's size: its turn_count counts turns, each one message sent and its answer.
 * @param {number} turns
 */
function exchangesView(turns) {
  const node = el("span", "exchanges", turns === 1 ? "1 exchange" : `${formatCount(turns)} exchanges`);
  node.title = turns === 1 ? "1 message sent, with its answer" : `${formatCount(turns)} messages sent, each with its answer`;
  return node;
}

/** @param {string | null} iso */
function formatWhen(iso) {
  if (!iso) return "";
  const then = new Date(iso);
  const seconds = (then.getTime() - Date.now()) / 1000;
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const abs = Math.abs(seconds);
  if (abs < 60) return "just now";
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), "hour");
  if (abs < 7 * 86400) return rtf.format(Math.round(seconds / 86400), "day");
  return then.toLocaleDateString();
}

/** @param {Session} session */
function sessionTitle(session) {
  return session.title?.trim() || "Untitled chat";
}

/** @param {string} key */
function maskKey(key) {
  return key.length > 10 ? `${key.slice(0, 3)}…${key.slice(-4)}` : "API key";
}

/**
 * Every page of a list.
 * @template T
 * @param {(query: {limit: number, after?: string, order: "asc"|"desc"}) => Promise<import("./parley.js").List<T>>} page
 * @param {"asc"|"desc"} order
 * @returns {Promise<T[]>}
 */
async function listAll(page, order) {
  /** @type {T[]} */
  const items = [];
  /** @type {string | undefined} */
  let after;
  for (let i = 0; i < MAX_PAGES; i++) {
    const result = await page({ limit: PAGE_LIMIT, after, order });
    items.push(...result.data);
    if (!result.has_more || !result.last_id) break;
    after = result.last_id;
  }
  return items;
}

// ---------------------------------------------------------------- errors and the key

/** @param {unknown} error */
function showError(error) {
  const text = typeof error === "string" ? error : describeError(error);
  ui.errorText.textContent = text;
  ui.error.hidden = false;
  const status = /** @type {any} */ (error)?.status;
  ui.error.dataset.status = status === undefined ? "" : String(status);
  if (status === 401) openKeyDialog(text);
}

function clearError() {
  ui.error.hidden = true;
  ui.errorText.textContent = "";
}

/** @param {string} [problem] */
function openKeyDialog(problem) {
  ui.keyError.hidden = !problem;
  ui.keyError.textContent = problem ?? "";
  ui.keyInput.value = "";
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

function updateKeyLabel() {
  const key = localStorage.getItem(KEY_STORAGE);
  ui.keyLabel.textContent = key ? maskKey(key) : "Set API key";
}

ui.keyForm.addEventListener("submit", (/** @type {SubmitEvent} */ event) => {
  const key = ui.keyInput.value.trim();
  if (!key) {
    event.preventDefault();
    return;
  }
  localStorage.setItem(KEY_STORAGE, key);
  updateKeyLabel();
  clearError();
  start();
});
ui.keyDialog.addEventListener("cancel", (/** @type {Event} */ event) => {
  // Without a key nothing works: the dialog stays until one is given.
  if (!localStorage.getItem(KEY_STORAGE)) event.preventDefault();
});
ui.keyForget.addEventListener("click", () => {
  localStorage.removeItem(KEY_STORAGE);
  updateKeyLabel();
  state.sessions = [];
  renderSessionList();
  showSession(null);
  openKeyDialog();
});
ui.changeKey.addEventListener("click", () => openKeyDialog());
ui.errorClose.addEventListener("click", clearError);

// ---------------------------------------------------------------- dialogs

/** @param {Session} session @returns {Promise<string | null>} */
function askTitle(session) {
  return new Promise((resolve) => {
    ui.renameInput.value = session.title ?? "";
    ui.renameDialog.returnValue = "";
    ui.renameDialog.showModal();
    ui.renameInput.select();
    ui.renameDialog.addEventListener(
      "close",
      () => resolve(ui.renameDialog.returnValue === "save" ? ui.renameInput.value.trim() : null),
      { once: true },
    );
  });
}
ui.renameCancel.addEventListener("click", () => ui.renameDialog.close());

/** @param {string} text @returns {Promise<boolean>} */
function confirmDelete(text) {
  return new Promise((resolve) => {
    ui.confirmText.textContent = text;
    ui.confirmDialog.returnValue = "";
    ui.confirmDialog.showModal();
    ui.confirmDialog.addEventListener("close", () => resolve(ui.confirmDialog.returnValue === "confirm"), {
      once: true,
    });
  });
}
ui.confirmCancel.addEventListener("click", () => ui.confirmDialog.close());

// ---------------------------------------------------------------- the sidebar

function setNavOpen(/** @type {boolean} */ open) {
  ui.app.classList.toggle("nav-open", open);
  ui.menu.setAttribute("aria-expanded", String(open));
}
ui.menu.addEventListener("click", () => setNavOpen(!ui.app.classList.contains("nav-open")));
ui.backdrop.addEventListener("click", () => setNavOpen(false));

async function loadSessions() {
  try {
    const page = await state.client.listSessions({ limit: PAGE_LIMIT });
    state.sessions = page.data;
  } catch (error) {
    showError(error);
    return false;
  }
  renderSessionList();
  return true;
}

async function loadUsage() {
  try {
    const report = await state.client.request("GET", "/v1/usage?group_by=day");
    const totals = report.totals ?? {};
    const tokens = (totals.input_tokens ?? 0) + (totals.output_tokens ?? 0);
    ui.usage.replaceChildren("This month: ", costView(totals.cost_usd ?? "0"), ` · ${formatCount(tokens)} tokens`);
  } catch {
    ui.usage.textContent = "";
  }
}

function renderSessionList() {
  ui.sessionList.replaceChildren();
  ui.sessionEmpty.hidden = state.sessions.length > 0 || !ui.searchResults.hidden;
  for (const session of state.sessions) {
    const item = el("li", "session-item");
    item.dataset.sessionId = session.id;
    const open = /** @type {HTMLButtonElement} */ (el("button", "session-open"));
    open.type = "button";
    if (session.id === state.sessionId) {
      item.classList.add("active");
      open.setAttribute("aria-current", "page");
    }
    const title = el("span", "session-title", sessionTitle(session));
    title.title = sessionTitle(session);
    const sub = el("span", "session-sub");
    const when = formatWhen(session.last_turn_at ?? session.created_at);
    sub.append(exchangesView(session.turn_count), " · ", costView(session.total_cost_usd), ` · ${when}`);
    open.append(title, sub);
    open.addEventListener("click", () => {
      setNavOpen(false);
      selectSession(session.id);
    });
    const rename = /** @type {HTMLButtonElement} */ (el("button", "icon-button session-rename"));
    rename.type = "button";
    rename.title = "Rename";
    rename.setAttribute("aria-label", `Rename ${sessionTitle(session)}`);
    rename.append(icon("edit"));
    rename.addEventListener("click", () => renameSession(session));
    const remove = /** @type {HTMLButtonElement} */ (el("button", "icon-button session-delete"));
    remove.type = "button";
    remove.title = "Delete";
    remove.setAttribute("aria-label", `Delete ${sessionTitle(session)}`);
    remove.append(icon("trash"));
    remove.addEventListener("click", () => deleteSession(session));
    const actions = el("div", "session-actions");
    actions.append(rename, remove);
    item.append(open, actions);
    ui.sessionList.append(item);
  }
}

/** @param {Session} session */
function upsertSession(session) {
  const index = state.sessions.findIndex((s) => s.id === session.id);
  if (index === -1) state.sessions.unshift(session);
  else state.sessions[index] = session;
  renderSessionList();
  if (session.id === state.sessionId) renderHeader(session);
}

/** @param {string} sessionId */
async function refreshSession(sessionId) {
  /** @type {Session | null} */
  let session = null;
  try {
    session = await state.client.getSession(sessionId);
    upsertSession(session);
  } catch {
    // The list simply keeps its last state.
  }
  loadUsage();
  if (session) awaitTitle(session);
}

// The server names a chat after its first answer, once that answer has ended: an untitled chat is asked again.
const TITLE_WAITS_MS = [500, 1000, 2000, 4000];

/** @param {Session} session */
async function awaitTitle(session) {
  for (const wait of TITLE_WAITS_MS) {
    if (session.title || session.title_source || session.turn_count !== 1) return;
    await new Promise((resolve) => setTimeout(resolve, wait));
    try {
      session = await state.client.getSession(session.id);
    } catch {
      return; // deleted meanwhile, or the server is away: the list keeps what it has
    }
    upsertSession(session);
  }
}

/** @returns {Promise<Session | null>} */
function createSession() {
  // One at a time: a message typed while "New chat" is still being created goes into that chat.
  state.creating ??= (async () => {
    clearError();
    ui.newSession.disabled = true;
    try {
      const session = await state.client.createSession({});
      upsertSession(session);
      await selectSession(session.id);
      return session;
    } catch (error) {
      showError(error);
      return null;
    } finally {
      ui.newSession.disabled = false;
      state.creating = null;
    }
  })();
  return state.creating;
}
ui.newSession.addEventListener("click", async () => {
  setNavOpen(false);
  await createSession();
  ui.input.focus();
});

/** @param {Session} session */
async function renameSession(session) {
  const title = await askTitle(session);
  if (title === null) return;
  try {
    upsertSession(await state.client.updateSession(session.id, { title: title || null }));
  } catch (error) {
    showError(error);
  }
}

/** @param {Session} session */
async function deleteSession(session) {
  const ok = await confirmDelete(`“${sessionTitle(session)}” and its history will be deleted for good.`);
  if (!ok) return;
  try {
    await state.client.deleteSession(session.id);
  } catch (error) {
    if (/** @type {any} */ (error).status !== 404) {
      showError(error);
      return;
    }
  }
  state.sessions = state.sessions.filter((s) => s.id !== session.id);
  renderSessionList();
  if (state.sessionId === session.id) {
    history.replaceState(null, "", location.pathname);
    showSession(null);
  }
  loadUsage();
}

// ---------------------------------------------------------------- search

/**
 * A snippet with its matched words marked: text nodes and <mark> elements, never HTML. The highlights are
 * UTF-16 offsets, which is what String.prototype.slice counts.
 * @param {string} snippet
 * @param {[number, number][]} highlights
 */
function snippetView(snippet, highlights) {
  const node = el("span", "search-snippet");
  let at = 0;
  for (const [start, end] of [...highlights].sort((a, b) => a[0] - b[0])) {
    if (start < at || end > snippet.length || end <= start) continue;
    node.append(snippet.slice(at, start), el("mark", "", snippet.slice(start, end)));
    at = end;
  }
  node.append(snippet.slice(at));
  return node;
}

/** @param {SearchResult} result */
function searchResultView(result) {
  const item = el("li", "search-item");
  item.dataset.sessionId = result.session_id;
  if (result.message_id) item.dataset.messageId = result.message_id;
  const open = /** @type {HTMLButtonElement} */ (el("button", "search-open"));
  open.type = "button";
  const title = el("span", "session-title", result.session_title?.trim() || "Untitled chat");
  const where = el("span", "search-where", result.message_id ? (result.role === "assistant" ? "Answer" : "Message") : "Title");
  const head = el("span", "search-head");
  head.append(title, where);
  open.append(head, snippetView(result.snippet, result.highlights));
  open.addEventListener("click", () => {
    setNavOpen(false);
    selectSession(result.session_id);
  });
  item.append(open);
  return item;
}

/** @param {boolean} on */
function setSearching(on) {
  ui.searchResults.hidden = !on;
  ui.sessionList.hidden = on;
  if (on) ui.sessionEmpty.hidden = true;
  else ui.sessionEmpty.hidden = state.sessions.length > 0;
}

/**
 * Show the results for what the search box holds (or the session list again, when it is empty).
 * @param {string} [after]  a result's id: append the results after it
 */
async function runSearch(after) {
  clearTimeout(state.searchTimer);
  const q = ui.searchInput.value.trim();
  const generation = ++state.searchGeneration;
  if (!q) {
    ui.searchList.replaceChildren();
    setSearching(false);
    return;
  }
  setSearching(true);
  ui.searchResults.setAttribute("aria-busy", "true");
  if (!after) ui.searchStatus.textContent = "Searching…";
  try {
    const page = await state.client.search(q, { limit: SEARCH_LIMIT, after });
    if (generation !== state.searchGeneration) return;
    if (!after) ui.searchList.replaceChildren();
    ui.searchList.append(...page.data.map(searchResultView));
    const count = ui.searchList.childElementCount;
    ui.searchStatus.textContent = count ? "" : `Nothing found for “${q}”.`;
    ui.searchMore.hidden = !page.has_more;
    ui.searchMore.dataset.after = page.last_id ?? "";
  } catch (error) {
    if (generation !== state.searchGeneration) return;
    ui.searchStatus.textContent = "";
    showError(error);
  } finally {
    if (generation === state.searchGeneration) ui.searchResults.removeAttribute("aria-busy");
  }
}

ui.searchInput.addEventListener("input", () => {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(() => runSearch(), SEARCH_DELAY_MS);
});
ui.searchForm.addEventListener("submit", (/** @type {SubmitEvent} */ event) => {
  event.preventDefault();
  runSearch();
});
ui.searchInput.addEventListener("keydown", (/** @type {KeyboardEvent} */ event) => {
  if (event.key === "Escape" && ui.searchInput.value) {
    event.preventDefault();
    ui.searchInput.value = "";
    runSearch();
  }
});
ui.searchMore.addEventListener("click", () => {
  if (ui.searchMore.dataset.after) runSearch(ui.searchMore.dataset.after);
});

// ---------------------------------------------------------------- the chat column

/** @param {Session | null} session */
function renderHeader(session) {
  ui.title.textContent = session ? sessionTitle(session) : "Parley";
  ui.chatActions.hidden = !session;
  if (!session) {
    ui.exportMenu.open = false;
    ui.meta.textContent = "";
    return;
  }
  ui.meta.replaceChildren(exchangesView(session.turn_count), " · ", costView(session.total_cost_usd));
}

/** @param {string} title @param {string} text */
function emptyState(title, text) {
  const box = el("div", "empty-state");
  box.append(el("div", "empty-logo", "P"), el("h2", "", title), el("p", "", text));
  return box;
}

/** @param {string | null} sessionId */
function showSession(sessionId) {
  state.generation += 1;
  if (state.stream) {
    // Stop listening, not the turn: it runs on and is re-attached when the session is opened again.
    state.stream.close();
    state.stream = null;
  }
  setStreaming(false);
  state.sessionId = sessionId;
  renderSessionList();
  const session = state.sessions.find((s) => s.id === sessionId) ?? null;
  renderHeader(session);
  ui.thread.replaceChildren();
  if (!sessionId) {
    ui.thread.append(
      emptyState("Parley playground", "Start a new chat, or pick a conversation from the list. Answers stream in as they are written."),
    );
  }
}

/** @param {string} sessionId */
async function selectSession(sessionId) {
  clearError();
  if (location.hash !== `#${sessionId}`) history.replaceState(null, "", `#${sessionId}`);
  showSession(sessionId);
  const generation = state.generation;
  ui.thread.setAttribute("aria-busy", "true");
  try {
    const [messages, turns] = await Promise.all([
      listAll((q) => state.client.listMessages(sessionId, q), "asc"),
      listAll((q) => state.client.listTurns(sessionId, q), "desc"),
    ]);
    if (generation !== state.generation) return;
    if (!state.sessions.some((s) => s.id === sessionId)) {
      upsertSession(await state.client.getSession(sessionId));
    }
    renderHistory(messages, turns);
    document.documentElement.dataset.loaded = sessionId;
  } catch (error) {
    if (generation !== state.generation) return;
    if (/** @type {any} */ (error).status === 404) {
      history.replaceState(null, "", location.pathname);
      showSession(null);
    }
    showError(error);
  } finally {
    ui.thread.removeAttribute("aria-busy");
  }
}

/**
 * The active branch, top to leaf: each message with its actions, each answer with its turn's meta. A user message
 * with no answer after it on the branch shows its newest turn (still being written, failed, or waiting for tool
 * outputs).
 * @param {Message[]} messages
 * @param {Turn[]} turns  newest first
 * @param {{keepScroll?: boolean}} [how]  keepScroll: stay where the reader is (switching versions), not at the end
 */
function renderHistory(messages, turns, how = {}) {
  const turnById = new Map(turns.map((t) => [t.id, t]));
  /** @type {Map<string, Turn>} the newest turn of each user message */
  const latestFor = new Map();
  for (const turn of turns) if (turn.message_id && !latestFor.has(turn.message_id)) latestFor.set(turn.message_id, turn);
  const scrollTop = ui.messages.scrollTop;
  const sessionId = /** @type {string} */ (state.sessionId);
  const generation = state.generation;
  ui.thread.replaceChildren();
  messages.forEach((message, index) => {
    if (message.role === "user") {
      const files = messageFiles(message.items).map((part) => ({ ...part, id: part.file_id }));
      const userView = appendUser(message.content, files);
      decorateUser(userView, message);
      if (messages[index + 1]?.role === "assistant") return;
      const turn = latestFor.get(message.id) ?? (message.turn_id ? turnById.get(message.turn_id) : undefined);
      if (turn) showTurn(userView, turn, sessionId, generation);
      return;
    }
    if (message.role !== "assistant") {
      appendNote(`${message.role}: ${message.content}`);
      return;
    }
    const turn = message.turn_id ? turnById.get(message.turn_id) : undefined;
    if (turn && IN_FLIGHT.has(turn.status)) {
      showTurn(null, turn, sessionId, generation);
      return;
    }
    const view = appendAssistant(message.turn_id ?? undefined);
    view.text = message.content ?? turn?.output_text ?? "";
    if (message.items) view.showItems(message.items);
    view.render();
    if (turn) view.finish(turn);
    else view.root.dataset.status = message.status ?? "completed";
    decorateAssistant(view, message, message.turn_id);
  });
  if (!messages.length) {
    ui.thread.append(emptyState("Say hello", "Your messages and the assistant's answers will appear here."));
  }
  if (how.keepScroll) ui.messages.scrollTop = scrollTop;
  else scrollToBottom(true);
}

/**
 * A turn with no stored answer on the branch: attach to it while it runs (another tab, or a reload mid-answer),
 * else show what it ended with.
 * @param {HTMLElement | null} userView
 * @param {Turn} turn
 * @param {string} sessionId
 * @param {number} generation
 */
function showTurn(userView, turn, sessionId, generation) {
  const view = appendAssistant(turn.id);
  if (IN_FLIGHT.has(turn.status)) {
    follow(view, (callbacks) => state.client.attach(turn.session_id, turn.id, callbacks), {
      onDone: (done) => decorateLive(sessionId, generation, userView, view, done),
    });
    return;
  }
  view.text = turn.output_text ?? "";
  view.render();
  view.finish(turn);
  decorateAssistant(view, null, turn.id);
}

/**
 * The active branch again, from the server (after an edit, a regenerate, or one that was refused).
 * @param {string} sessionId
 * @param {number} generation
 */
async function reloadBranch(sessionId, generation) {
  try {
    const [messages, turns] = await Promise.all([
      listAll((q) => state.client.listMessages(sessionId, q), "asc"),
      listAll((q) => state.client.listTurns(sessionId, q), "desc"),
    ]);
    if (generation !== state.generation || state.stream) return;
    renderHistory(messages, turns);
  } catch (error) {
    if (generation === state.generation) showError(error);
  }
}

// ---------------------------------------------------------------- branches: edit, regenerate, versions, fork

/** Whether a turn is being streamed into the open session (edit, regenerate and switching wait for it). */
function busy() {
  return ui.app.classList.contains("streaming");
}

/**
 * A small icon button under a message. `turn` actions (edit, regenerate, switching versions) start or move a
 * turn, so they are off while one streams: the server would answer 409.
 * @param {string} action
 * @param {string} label
 * @param {string} iconName
 * @param {() => void} onClick
 * @param {{turn?: boolean}} [kind]
 */
function actionButton(action, label, iconName, onClick, kind = {}) {
  const button = /** @type {HTMLButtonElement} */ (el("button", "msg-action"));
  button.type = "button";
  button.dataset.action = action;
  button.title = label;
  button.setAttribute("aria-label", label);
  button.append(icon(iconName));
  if (kind.turn) {
    button.classList.add("turn-action");
    button.disabled = busy();
  }
  button.addEventListener("click", onClick);
  return button;
}

/** Turn actions off while a turn streams, and on again after (a version switcher's ends stay off). */
function lockTurnActions(/** @type {boolean} */ on) {
  for (const button of ui.thread.querySelectorAll(".turn-action")) {
    /** @type {HTMLButtonElement} */ (button).disabled = on || button.dataset.edge === "true";
  }
}

/**
 * "‹ 2/3 ›": which version of a message this is; the arrows make the branch through the one before or after
 * it the active one.
 * @param {Message} message
 */
function versionSwitcher(message) {
  const alternatives = /** @type {import("./parley.js").Alternatives} */ (message.alternatives);
  const { index, count, message_ids: ids } = alternatives;
  const what = message.role === "user" ? "message" : "answer";
  const nav = el("span", "versions");
  nav.setAttribute("role", "group");
  nav.setAttribute("aria-label", `Versions of this ${what}`);
  /** @param {"previous" | "next"} direction */
  const arrow = (direction) => {
    const target = direction === "previous" ? index - 1 : index + 1;
    const button = /** @type {HTMLButtonElement} */ (el("button", `msg-action turn-action version-${direction}`));
    button.type = "button";
    button.textContent = direction === "previous" ? "‹" : "›";
    const label = `${direction === "previous" ? "Previous" : "Next"} version`;
    button.title = label;
    button.setAttribute("aria-label", label);
    button.dataset.edge = String(target < 0 || target >= count);
    button.disabled = busy() || button.dataset.edge === "true";
    button.addEventListener("click", () => switchVersion(ids[target], direction));
    return button;
  };
  const position = el("span", "version-position", `${index + 1}/${count}`);
  position.title = `Version ${index + 1} of ${count}`;
  position.setAttribute("aria-label", `Version ${index + 1} of ${count}`);
  nav.append(arrow("previous"), position, arrow("next"));
  return nav;
}

/** @param {HTMLElement} userView @param {Message} message */
function decorateUser(userView, message) {
  userView.dataset.messageId = message.id;
  const actions = el("div", "msg-actions");
  if (message.alternatives && message.alternatives.count > 1) actions.append(versionSwitcher(message));
  actions.append(
    actionButton("edit", "Edit message", "edit", () => startEdit(userView, message), { turn: true }),
    actionButton("fork", "Fork from here", "fork", () => forkFrom(message.id)),
  );
  userView.querySelector(".msg-actions")?.remove();
  userView.append(actions);
}

/**
 * @param {AssistantView} view
 * @param {Message | null} message  the stored answer (null: a turn that ended without one)
 * @param {string | null} turnId
 */
function decorateAssistant(view, message, turnId) {
  if (message) view.root.dataset.messageId = message.id;
  view.actions.replaceChildren();
  if (message?.alternatives && message.alternatives.count > 1) view.actions.append(versionSwitcher(message));
  if (turnId) {
    view.actions.append(
      actionButton("regenerate", "Regenerate answer", "refresh", () => regenerateAnswer(view.root, turnId), { turn: true }),
    );
  }
  if (message) view.actions.append(actionButton("fork", "Fork from here", "fork", () => forkFrom(message.id)));
}

/**
 * A turn streamed into the page has ended: give its message and answer their ids and actions (from the branch's
 * last messages), without drawing them again (what showed live, such as tool call durations, stays).
 * @param {string} sessionId
 * @param {number} generation
 * @param {HTMLElement | null} userView
 * @param {AssistantView} view
 * @param {Turn} turn
 */
async function decorateLive(sessionId, generation, userView, view, turn) {
  let recent;
  try {
    recent = await state.client.listMessages(sessionId, { limit: 4, order: "desc" });
  } catch {
    return;
  }
  if (generation !== state.generation) return;
  const answer = recent.data.find((m) => m.role === "assistant" && m.turn_id === turn.id) ?? null;
  const asked = recent.data.find((m) => m.role === "user" && (m.id === turn.message_id || m.turn_id === turn.id));
  keepPinned(() => {
    if (userView?.isConnected && asked) decorateUser(userView, asked);
    if (view.root.isConnected) decorateAssistant(view, answer, turn.id);
  });
}

/**
 * Edit a user message in place: a textarea with Save and Cancel instead of its bubble.
 * @param {HTMLElement} userView
 * @param {Message} message
 */
function startEdit(userView, message) {
  if (busy() || userView.querySelector(".edit-form")) return;
  const bubble = /** @type {HTMLElement} */ (userView.querySelector(".bubble"));
  const actions = /** @type {HTMLElement | null} */ (userView.querySelector(".msg-actions"));
  const form = /** @type {HTMLFormElement} */ (el("form", "edit-form"));
  form.setAttribute("aria-label", "Edit message");
  const input = /** @type {HTMLTextAreaElement} */ (el("textarea", "edit-input"));
  input.value = message.content;
  input.rows = Math.min(10, Math.max(2, message.content.split("\n").length));
  input.setAttribute("aria-label", "Edited message");
  const cancel = /** @type {HTMLButtonElement} */ (el("button", "button ghost edit-cancel", "Cancel"));
  cancel.type = "button";
  const save = /** @type {HTMLButtonElement} */ (el("button", "button primary edit-save turn-action", "Save"));
  save.type = "submit";
  save.disabled = busy();
  const buttons = el("div", "edit-actions");
  buttons.append(cancel, save);
  form.append(input, buttons);
  bubble.hidden = true;
  if (actions) actions.hidden = true;
  userView.append(form);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);

  const close = () => {
    form.remove();
    bubble.hidden = false;
    if (actions) actions.hidden = false;
    /** @type {HTMLElement | null} */ (actions?.querySelector("[data-action='edit']"))?.focus();
  };
  cancel.addEventListener("click", close);
  input.addEventListener("keydown", (/** @type {KeyboardEvent} */ event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (/** @type {SubmitEvent} */ event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || busy()) return;
    form.remove();
    bubble.textContent = text;
    bubble.hidden = false;
    actions?.remove();
    delete userView.dataset.messageId;
    sendEdit(userView, message, text);
  });
}

/**
 * Send an edited message: what came after it on the branch gives way to the new answer, streamed as a send's.
 * @param {HTMLElement} userView
 * @param {Message} message
 * @param {string} text
 */
function sendEdit(userView, message, text) {
  const sessionId = /** @type {string} */ (state.sessionId);
  const generation = state.generation;
  clearError();
  while (userView.nextSibling) userView.nextSibling.remove();
  const view = appendAssistant();
  scrollToBottom(true);
  const again = () => reloadBranch(sessionId, generation);
  follow(view, (callbacks) => state.client.editMessage(sessionId, message.id, messageBody(text), callbacks), {
    onDone: again,
    onRejected: again,
  });
}

/**
 * Answer a turn's message again: this answer and what came after it give way to the new one.
 * @param {HTMLElement} answerView
 * @param {string} turnId
 */
function regenerateAnswer(answerView, turnId) {
  if (busy()) return;
  const sessionId = /** @type {string} */ (state.sessionId);
  const generation = state.generation;
  clearError();
  while (answerView.nextSibling) answerView.nextSibling.remove();
  answerView.remove();
  const view = appendAssistant();
  scrollToBottom(true);
  const again = () => reloadBranch(sessionId, generation);
  follow(view, (callbacks) => state.client.regenerate(sessionId, turnId, {}, callbacks), {
    onDone: again,
    onRejected: again,
  });
}

/**
 * Show another version of a message: the branch through it becomes the active one.
 * @param {string} messageId
 * @param {"previous" | "next"} direction  the arrow pressed, which keeps the focus
 */
async function switchVersion(messageId, direction) {
  const sessionId = state.sessionId;
  if (!sessionId || busy()) return;
  const generation = state.generation;
  clearError();
  ui.thread.setAttribute("aria-busy", "true");
  try {
    const [branch, turns] = await Promise.all([
      state.client.activate(sessionId, messageId, { limit: PAGE_LIMIT }),
      listAll((q) => state.client.listTurns(sessionId, q), "desc"),
    ]);
    const messages = branch.has_more ? await listAll((q) => state.client.listMessages(sessionId, q), "asc") : branch.data;
    if (generation !== state.generation) return;
    renderHistory(messages, turns, { keepScroll: true });
    const switcher = ui.thread.querySelector(`[data-message-id="${CSS.escape(messageId)}"] .versions`);
    const arrow = /** @type {HTMLButtonElement | null} */ (switcher?.querySelector(`.version-${direction}`));
    const other = /** @type {HTMLButtonElement | null} */ (
      switcher?.querySelector(`.version-${direction === "previous" ? "next" : "previous"}`)
    );
    (arrow && !arrow.disabled ? arrow : other)?.focus();
  } catch (error) {
    if (generation === state.generation) showError(error);
  } finally {
    ui.thread.removeAttribute("aria-busy");
  }
}

/**
 * A new chat whose history is this one's up to and including a message; it opens in its place.
 * @param {string} messageId
 */
async function forkFrom(messageId) {
  const sessionId = state.sessionId;
  if (!sessionId) return;
  clearError();
  try {
    const session = await state.client.fork(sessionId, { message_id: messageId });
    upsertSession(session);
    await selectSession(session.id);
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------- export

/**
 * Download the open chat. The export needs the key in its Authorization header, so it is fetched, and saved
 * through a link to the file's bytes.
 * @param {"json" | "markdown"} format
 * @param {boolean} allBranches
 */
async function exportChat(format, allBranches) {
  const sessionId = state.sessionId;
  if (!sessionId) return;
  clearError();
  try {
    const file = await state.client.exportSession(sessionId, { format, branches: allBranches ? "all" : undefined });
    const url = URL.createObjectURL(file.blob);
    const link = /** @type {HTMLAnchorElement} */ (el("a"));
    link.href = url;
    link.download = file.filename;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    showError(error);
  }
}

ui.exportMenu.addEventListener("click", (/** @type {MouseEvent} */ event) => {
  const choice = /** @type {HTMLElement | null} */ (event.target)?.closest?.("[data-format]");
  if (!choice) return;
  ui.exportMenu.open = false;
  exportChat(choice.dataset.format === "markdown" ? "markdown" : "json", choice.dataset.branches === "all");
});
ui.exportMenu.addEventListener("keydown", (/** @type {KeyboardEvent} */ event) => {
  if (event.key === "Escape" && ui.exportMenu.open) {
    event.preventDefault();
    event.stopPropagation();
    ui.exportMenu.open = false;
    ui.exportMenu.querySelector("summary").focus();
  }
});
document.addEventListener("click", (event) => {
  if (ui.exportMenu.open && !ui.exportMenu.contains(/** @type {Node} */ (event.target))) ui.exportMenu.open = false;
});

// ---------------------------------------------------------------- model and prompt pickers

/**
 * The names a picker offers: what the deployment allows by name, and its default (`"*"`, anything, is not a name).
 * @param {{default: string | null, allowed: string[]} | undefined} choices
 * @returns {string[]}
 */
function pickable(choices) {
  if (!choices) return [];
  const names = choices.allowed.filter((name) => name !== "*");
  if (choices.default && !names.includes(choices.default)) names.unshift(choices.default);
  return names;
}

/**
 * @param {HTMLSelectElement} select
 * @param {string[]} names
 * @param {string | null} deploymentDefault
 */
function fillPicker(select, names, deploymentDefault) {
  const kept = select.value;
  const none = /** @type {HTMLOptionElement} */ (el("option", "", "(session default)"));
  none.value = "";
  select.replaceChildren(
    none,
    ...names.map((name) => {
      const option = /** @type {HTMLOptionElement} */ (el("option", "", name));
      option.value = name;
      if (name === deploymentDefault) option.title = "This server's default";
      return option;
    }),
  );
  select.value = names.includes(kept) ? kept : "";
  /** @type {HTMLElement} */ (select.closest(".picker")).hidden = names.length === 0;
}

async function loadConfig() {
  try {
    state.config = await state.client.config();
  } catch {
    state.config = null;
  }
  const config = state.config;
  fillPicker(ui.modelPicker, pickable(config?.models), config?.models.default ?? null);
  fillPicker(ui.promptPicker, pickable(config?.prompts), config?.prompts.default ?? null);
  ui.pickers.hidden = ui.modelPicker.closest(".picker").hidden && ui.promptPicker.closest(".picker").hidden;
}

/**
 * What a send (or an edit) carries: the text, and the model and prompt picked, if any (else the session's).
 * @param {string} text
 * @returns {string | import("./parley.js").MessageBody}
 */
function messageBody(text, files = []) {
  const model = ui.pickers.hidden ? "" : ui.modelPicker.value;
  const prompt = ui.pickers.hidden ? "" : ui.promptPicker.value;
  if (!model && !prompt && !files.length) return text;
  const input = files.length ? messageInput(text, files) : text;
  return { input, ...(model ? { model } : {}), ...(prompt ? { prompt: { id: prompt } } : {}) };
}

/** @param {string} text @param {Shown[]} [files] */
function appendUser(text, files = []) {
  ui.thread.querySelector(".empty-state")?.remove();
  const root = el("article", "msg user");
  root.dataset.role = "user";
  if (files.length) root.append(attachmentsView(files));
  if (text || !files.length) root.append(el("div", "bubble", text));
  ui.thread.append(root);
  return root;
}

/** @param {string} text */
function appendNote(text) {
  const note = el("p", "note", text);
  ui.thread.append(note);
}

/**
 * An assistant answer in the thread: its Markdown body, tool calls and turn meta.
 * @param {string} [turnId]
 */
function appendAssistant(turnId) {
  ui.thread.querySelector(".empty-state")?.remove();
  const root = el("article", "msg assistant");
  root.dataset.role = "assistant";
  if (turnId) root.dataset.turnId = turnId;
  const avatar = el("div", "avatar", "P");
  avatar.setAttribute("aria-hidden", "true");
  const body = el("div", "msg-body");
  const reasoning = reasoningView();
  const tools = el("div", "tool-calls");
  const content = el("div", "content markdown");
  const sources = el("ul", "sources");
  sources.hidden = true;
  sources.setAttribute("aria-label", "Sources");
  const meta = el("div", "turn-meta");
  const actions = el("div", "msg-actions");
  body.append(reasoning.root, tools, content, sources, meta, actions);
  root.append(avatar, body);
  ui.thread.append(root);

  /** @type {Map<string, HTMLElement>} */
  const toolViews = new Map();
  let pending = false;

  const view = {
    root,
    text: "",
    reasoning,
    actions,
    render() {
      content.replaceChildren(renderMarkdown(view.text));
      addCopyButtons(content);
    },
    /** Re-render at most once per frame, however fast the deltas come. */
    schedule() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        keepPinned(view.render);
      });
    },
    streaming() {
      root.dataset.status = "streaming";
      root.setAttribute("aria-busy", "true");
      meta.replaceChildren(el("span", "typing", ""));
      /** @type {HTMLElement} */ (meta.firstChild).setAttribute("aria-label", "Writing");
    },
    /** @param {boolean} on */
    reconnecting(on) {
      root.classList.toggle("reconnecting", on);
      const existing = meta.querySelector(".reconnect");
      if (on && !existing) meta.append(el("span", "badge reconnect", "Connection lost — reconnecting…"));
      if (!on && existing) existing.remove();
    },
    /**
     * The answer's citations (`url_citation` annotations), each once, as links; only http(s) URLs.
     * @param {any[]} annotations
     */
    cite(annotations) {
      for (const note of annotations) {
        if (note?.type !== "url_citation" || typeof note.url !== "string" || !/^https?:\/\//.test(note.url)) continue;
        if ([...sources.querySelectorAll("a")].some((a) => a.getAttribute("href") === note.url)) continue;
        const link = /** @type {HTMLAnchorElement} */ (el("a", "source", note.title || note.url));
        link.href = note.url;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        const entry = el("li");
        entry.append(link);
        sources.append(entry);
        sources.hidden = false;
      }
    },
    /**
     * A stored answer's items (after a reload): its reasoning summary, tool calls and citations, as they showed live.
     * @param {any[]} items
     */
    showItems(items) {
      const outputs = new Map(
        items.filter((item) => item?.type === "function_call_output").map((item) => [item.call_id, item.output]),
      );
      items.forEach((item, index) => {
        if (item?.type === "reasoning" && Array.isArray(item.summary)) {
          const summary = item.summary.map((/** @type {string} */ text) => ({ type: "summary_text", text }));
          reasoning.observe({ name: "response.output_item.done", data: { item: { type: "reasoning", id: `stored-${index}`, summary } } });
        } else if (item?.type === "function_call") {
          const output = outputs.get(item.call_id);
          view.toolCall({
            phase: "completed",
            source: output === undefined ? "function" : "parley",
            call_id: item.call_id,
            name: item.name,
            arguments: item.arguments,
            output,
          });
        } else if (item?.type === "message" && Array.isArray(item.content)) {
          for (const part of item.content) view.cite(Array.isArray(part?.annotations) ? part.annotations : []);
        }
      });
      reasoning.answering();
    },
    /** @param {ToolCall} call */
    toolCall(call) {
      let chip = toolViews.get(call.call_id);
      if (!chip) {
        chip = el("div", "tool-call");
        chip.dataset.callId = call.call_id;
        chip.append(icon("tool"), el("span", "tool-name"), el("code", "tool-args"), el("span", "tool-state"));
        toolViews.set(call.call_id, chip);
        tools.append(chip);
      }
      chip.dataset.phase = call.phase;
      chip.dataset.source = call.source;
      /** @type {HTMLElement} */ (chip.querySelector(".tool-name")).textContent = call.name ?? "tool";
      const args = /** @type {HTMLElement} */ (chip.querySelector(".tool-args"));
      if (call.arguments) args.textContent = call.arguments.length > 120 ? `${call.arguments.slice(0, 117)}…` : call.arguments;
      const stateText =
        call.phase === "started"
          ? "running…"
          : call.error
            ? "failed"
            : call.source === "function"
              ? "requested"
              : `done${call.duration_ms != null ? ` · ${call.duration_ms} ms` : ""}`;
      /** @type {HTMLElement} */ (chip.querySelector(".tool-state")).textContent = stateText;
    },
    /** @param {Turn} turn */
    finish(turn) {
      root.dataset.status = turn.status;
      root.dataset.turnId = turn.id;
      root.removeAttribute("aria-busy");
      view.reconnecting(false);
      if (!view.text && turn.output_text) view.text = turn.output_text;
      view.render();
      meta.replaceChildren();
      const badges = {
        cancelled: "Stopped",
        incomplete: "Cut short",
        failed: "Failed",
        requires_action: "Waiting for tool output",
      };
      const badge = /** @type {Record<string, string>} */ (badges)[turn.status];
      if (badge) meta.append(el("span", `badge status-${turn.status}`, badge));
      if (turn.usage) {
        const u = turn.usage;
        const tokens = el("span", "tokens", `${formatCount(u.total_tokens)} tokens`);
        const detail = [`${formatCount(u.input_tokens)} in`, `${formatCount(u.output_tokens)} out`];
        if (u.reasoning_tokens) detail.push(`${formatCount(u.reasoning_tokens)} reasoning`);
        if (u.cached_input_tokens) detail.push(`${formatCount(u.cached_input_tokens)} cached`);
        tokens.title = detail.join(" · ");
        meta.append(tokens, el("span", "token-detail", detail.join(" · ")));
      }
      meta.append(costView(turn.cost_usd));
      if (turn.ttft_ms != null) meta.append(el("span", "ttft", `first token ${turn.ttft_ms} ms`));
      if (!IN_FLIGHT.has(turn.status) && turn.status !== "requires_action") meta.append(thumbsView(turn));
      if (turn.error && (turn.status === "failed" || turn.status === "incomplete")) {
        const problem = el("p", "turn-error", describeError(turn.error));
        problem.setAttribute("role", "status");
        body.append(problem);
      }
    },
  };
  return view;
}

/** @typedef {ReturnType<typeof appendAssistant>} AssistantView */

/**
 * Thumbs up and down on a finished answer: pressing one rates the turn, pressing it again takes the rating back.
 * @param {Turn} turn
 */
function thumbsView(turn) {
  const root = el("span", "thumbs");
  root.setAttribute("role", "group");
  root.setAttribute("aria-label", "Rate this answer");
  /** @type {"up" | "down" | null} */
  let rating = turn.feedback?.rating ?? null;
  const buttons = /** @type {const} */ (["up", "down"]).map((value) => {
    const button = /** @type {HTMLButtonElement} */ (el("button", `thumb thumb-${value}`));
    button.type = "button";
    button.dataset.rating = value;
    button.setAttribute("aria-label", value === "up" ? "Good answer" : "Bad answer");
    button.append(icon(`thumb-${value}`));
    button.addEventListener("click", async () => {
      const next = rating === value ? null : value;
      try {
        const rated = await state.client.rateTurn(turn.session_id, turn.id, next);
        rating = rated.feedback?.rating ?? null;
        show();
      } catch (error) {
        showError(error);
      }
    });
    return button;
  });
  const show = () => {
    for (const button of buttons) button.setAttribute("aria-pressed", String(button.dataset.rating === rating));
  };
  show();
  root.append(...buttons);
  return root;
}

/**
 * A reasoning model's summary of its thinking, as it streams (`response.reasoning_summary_text.delta`, one
 * part per item and summary_index): a collapsible block above the answer, open while the model thinks and
 * folded once the answer starts, unless the reader has opened or closed it. Text only reaches the page
 * through renderMarkdown (text nodes).
 */
function reasoningView() {
  const root = /** @type {HTMLDetailsElement} */ (el("details", "reasoning"));
  root.hidden = true;
  root.open = true;
  const label = el("summary", "reasoning-label", "Reasoning");
  const text = el("div", "reasoning-text markdown");
  root.append(label, text);
  let touched = false;
  label.addEventListener("click", () => {
    touched = true;
  });
  /** @type {Map<string, {node: HTMLElement, text: string}>} */
  const parts = new Map();

  /** @param {unknown} itemId @param {unknown} index */
  function part(itemId, index) {
    const key = `${itemId}:${index}`;
    let found = parts.get(key);
    if (!found) {
      found = { node: el("div", "reasoning-part"), text: "" };
      parts.set(key, found);
      text.append(found.node);
    }
    return found;
  }

  /** @param {{node: HTMLElement, text: string}} target @param {string} value */
  function show(target, value) {
    target.text = value;
    target.node.replaceChildren(renderMarkdown(value));
    root.hidden = ![...parts.values()].some((p) => p.text);
  }

  return {
    root,
    /** @param {import("./parley.js").ParleyEvent} event */
    observe(event) {
      const { name, data } = event;
      if (name === "response.reasoning_summary_text.delta" && typeof data?.delta === "string") {
        const target = part(data.item_id, data.summary_index);
        show(target, target.text + data.delta);
      } else if (name === "response.reasoning_summary_text.done" && typeof data?.text === "string") {
        show(part(data.item_id, data.summary_index), data.text);
      } else if (name === "response.output_item.done" && data?.item?.type === "reasoning") {
        const summary = Array.isArray(data.item.summary) ? data.item.summary : [];
        summary.forEach((/** @type {any} */ piece, /** @type {number} */ index) => {
          if (piece?.type === "summary_text" && typeof piece.text === "string") show(part(data.item.id, index), piece.text);
        });
      }
    },
    /** The answer has begun: fold the reasoning away, unless the reader chose. */
    answering() {
      if (!touched) root.open = false;
    },
  };
}

/**
 * A "Copy" button on each code block of rendered Markdown. Its words are CSS content (data-label), so they
 * never become part of the answer's text (its textContent, a selection, a copy of the whole answer).
 * @param {HTMLElement} container
 */
function addCopyButtons(container) {
  for (const pre of container.querySelectorAll("pre")) {
    const block = el("div", "code-block");
    const button = /** @type {HTMLButtonElement} */ (el("button", "copy-code"));
    button.type = "button";
    button.dataset.label = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.append(icon("copy"));
    pre.replaceWith(block);
    block.append(pre, button);
  }
}

/** @param {HTMLButtonElement} button */
async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("code");
  if (!code) return;
  const text = code.textContent ?? "";
  let label = "Copied";
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard here (a page not on https or localhost, or permission refused): select the code instead.
    getSelection()?.selectAllChildren(code);
    label = "Selected: press Ctrl+C";
  }
  button.dataset.label = label;
  button.setAttribute("aria-label", label);
  button.classList.add("done");
  setTimeout(() => {
    button.dataset.label = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.classList.remove("done");
  }, COPIED_FOR_MS);
}

ui.thread.addEventListener("click", (/** @type {MouseEvent} */ event) => {
  const button = /** @type {HTMLElement | null} */ (event.target)?.closest?.(".copy-code");
  if (button) copyCode(/** @type {HTMLButtonElement} */ (button));
});

function isPinned() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom(force = false) {
  if (force || isPinned()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

/**
 * Makes `change` to the thread and keeps a reader who was at the bottom there: an answer's tool calls,
 * reasoning and closing line (tokens, cost) grow it as its text does, and a fast answer ends within a frame.
 * @param {() => void} change
 */
function keepPinned(change) {
  const pinned = isPinned();
  change();
  if (pinned) scrollToBottom(true);
}

/** @param {boolean} on */
function setStreaming(on) {
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  ui.stop.disabled = false;
  ui.app.classList.toggle("streaming", on);
  lockTurnActions(on);
}

/**
 * Stream a turn into `view`, via `open` (a send or an attach).
 * @param {AssistantView} view
 * @param {(callbacks: import("./parley.js").TurnCallbacks) => TurnStream} open
 * @param {{onRejected?: (error: any) => void, onDone?: (turn: Turn) => void}} [hooks]  onRejected: the turn was
 *   never started (no `turn.created`); onDone: it ended, in the session still open
 */
function follow(view, open, hooks = {}) {
  const generation = state.generation;
  const current = () => generation === state.generation;
  view.streaming();
  setStreaming(true);
  /** @type {TurnStream} */
  const stream = open({
    onTurn: (turn) => {
      view.root.dataset.turnId = turn.id;
    },
    onEvent: (event) =>
      keepPinned(() => {
        view.reconnecting(false);
        view.reasoning.observe(event);
        const item = event.name === "response.output_item.done" ? event.data?.item : null;
        if (item?.type === "message" && Array.isArray(item.content)) {
          for (const part of item.content) view.cite(Array.isArray(part?.annotations) ? part.annotations : []);
        }
      }),
    onDelta: (delta) => {
      view.text += delta;
      view.reasoning.answering();
      view.schedule();
    },
    onToolCall: (call) => keepPinned(() => view.toolCall(call)),
    onReconnect: () => keepPinned(() => view.reconnecting(true)),
    onDone: (turn) => {
      keepPinned(() => view.finish(turn));
      if (state.stream === stream) {
        state.stream = null;
        setStreaming(false);
      }
      if (current()) {
        refreshSession(turn.session_id);
        hooks.onDone?.(turn);
      }
    },
    onError: (error) => {
      if (state.stream === stream) {
        state.stream = null;
        setStreaming(false);
      }
      if (!current()) return;
      if (!view.root.dataset.turnId) {
        view.root.remove();
        hooks.onRejected?.(error);
      } else {
        view.reconnecting(false);
        view.root.dataset.status = "disconnected";
        view.root.removeAttribute("aria-busy");
        view.render();
        const meta = /** @type {HTMLElement} */ (view.root.querySelector(".turn-meta"));
        meta.replaceChildren(el("span", "badge status-failed", "Connection lost — reload to see the rest"));
      }
      showError(error);
    },
  });
  state.stream = stream;
  return stream;
}

/** @param {string} text @param {ParleyFile[]} [files] */
async function sendMessage(text, files = []) {
  clearError();
  if (state.creating) await state.creating;
  if (state.stream) {
    // Opening the chat found an answer still being written (another tab): that one goes first.
    ui.input.value ||= text;
    return;
  }
  let session = state.sessions.find((s) => s.id === state.sessionId) ?? null;
  if (!session) {
    session = await createSession();
    if (!session) return;
  }
  const sessionId = session.id;
  const generation = state.generation;
  const userView = appendUser(text, files);
  const view = appendAssistant();
  scrollToBottom(true);
  follow(view, (callbacks) => state.client.send(sessionId, messageBody(text, files), callbacks), {
    onDone: (turn) => decorateLive(sessionId, generation, userView, view, turn),
    onRejected: async () => {
      // No `turn.created` came back, but the server may still have stored the message (a failure upstream
      // before the first byte is stored as a failed turn; a proxy can fail a stream the server answered).
      // Show what the server has, as a reload would.
      const stored = await storedTurnFor(sessionId, text);
      if (generation !== state.generation) return;
      if (stored) {
        showStoredTurn(userView, stored);
        return;
      }
      userView.classList.add("not-sent");
      userView.append(el("p", "not-sent-note", stored === null ? "Not sent" : "Maybe not sent: reload to check"));
      if (!ui.input.value) {
        ui.input.value = text;
        autosize();
      }
    },
  });
}

/**
 * The turn the server stored for a message sent from this page whose stream never said which turn it was:
 * the newest of the session's turns with this input that the page does not show yet. null when there is
 * none (the server did not take the message); undefined when the server could not be asked.
 * @param {string} sessionId
 * @param {string} text
 * @returns {Promise<Turn | null | undefined>}
 */
async function storedTurnFor(sessionId, text) {
  let recent;
  try {
    recent = await state.client.listTurns(sessionId, { limit: 10, order: "desc" });
  } catch {
    return undefined;
  }
  const shown = new Set(Array.from(ui.thread.querySelectorAll("[data-turn-id]"), (node) => node.dataset.turnId));
  return recent.data.find((turn) => !shown.has(turn.id) && turn.input === text) ?? null;
}

/**
 * A message the server stored although its stream failed: its answer as the server has it (still being
 * written, or ended), right after the message.
 * @param {HTMLElement} userView
 * @param {Turn} turn
 */
function showStoredTurn(userView, turn) {
  const view = appendAssistant(turn.id);
  userView.after(view.root);
  if (IN_FLIGHT.has(turn.status)) {
    clearError();
    follow(view, (callbacks) => state.client.attach(turn.session_id, turn.id, callbacks));
  } else {
    // A failed turn keeps the banner: it says what went wrong. Otherwise the banner's failure was not the turn's.
    if (turn.status !== "failed") clearError();
    view.finish(turn);
  }
  refreshSession(turn.session_id);
}

ui.composer.addEventListener("submit", async (/** @type {SubmitEvent} */ event) => {
  event.preventDefault();
  if (state.stream || ui.send.disabled) return;
  const text = ui.input.value.trim();
  if (!text && !state.attachments.length) return;
  if (!localStorage.getItem(KEY_STORAGE)) {
    openKeyDialog();
    return;
  }
  /** @type {ParleyFile[]} */
  let files = [];
  if (state.attachments.length) {
    // Send waits for the uploads; one that fails is taken off (its error shown) and the message stays unsent.
    const pending = [...state.attachments];
    ui.send.disabled = true;
    ui.composer.dataset.waiting = "true";
    let uploaded;
    try {
      uploaded = await Promise.all(pending.map((item) => item.done));
    } finally {
      ui.send.disabled = false;
      delete ui.composer.dataset.waiting;
    }
    if (uploaded.some((file) => !file) || state.stream) return;
    files = /** @type {ParleyFile[]} */ (uploaded);
    for (const item of pending) removeAttachment(item, { keepUpload: true });
  }
  ui.input.value = "";
  autosize();
  sendMessage(text, files);
});

ui.input.addEventListener("keydown", (/** @type {KeyboardEvent} */ event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 220)}px`;
}
ui.input.addEventListener("input", autosize);

ui.stop.addEventListener("click", async () => {
  const stream = state.stream;
  if (!stream) return;
  ui.stop.disabled = true;
  try {
    await stream.cancel();
  } catch (error) {
    ui.stop.disabled = false;
    showError(error);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.stream && !document.querySelector("dialog[open]")) ui.stop.click();
});

// ---------------------------------------------------------------- attachments

/** A size as a person reads it. @param {number} bytes */
function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

/** A short name for a content type ("PNG", "PDF", "Markdown"). @param {string} type @param {string} name */
function typeLabel(type, name) {
  const known = /** @type {Record<string, string>} */ ({
    "text/plain": "Text",
    "text/markdown": "Markdown",
    "text/csv": "CSV",
    "application/json": "JSON",
    "application/pdf": "PDF",
  });
  const bare = type.split(";")[0].trim();
  if (known[bare]) return known[bare];
  if (bare.startsWith("image/")) return bare.slice(6).toUpperCase();
  const extension = name.includes(".") ? name.split(".").pop() : "";
  return (extension || bare || "file").toUpperCase();
}

/** @param {Shown} file */
function isImage(file) {
  return file.content_type.startsWith("image/");
}

/** @param {Blob} blob @returns {Promise<string>} */
function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * A thumbnail's source for an uploaded image: fetched once with the key (an <img> cannot send it), kept by id.
 * @param {string} fileId
 */
function thumbnail(fileId) {
  let url = state.thumbnails.get(fileId);
  if (!url) {
    url = state.client.fetchFileBlob(fileId).then(dataUrl);
    url.catch(() => state.thumbnails.delete(fileId));
    state.thumbnails.set(fileId, url);
  }
  return url;
}

/**
 * A message's files: images as thumbnails, other files as a chip with name, type and size.
 * @param {Shown[]} files
 */
function attachmentsView(files) {
  const list = el("div", "attachments sent");
  list.setAttribute("aria-label", "Attachments");
  for (const file of files) {
    const details = `${file.filename}, ${typeLabel(file.content_type, file.filename)}, ${formatBytes(file.bytes)}`;
    if (isImage(file) && file.id) {
      const figure = el("figure", "attachment image");
      figure.title = details;
      figure.dataset.fileId = file.id;
      const img = /** @type {HTMLImageElement} */ (el("img", "thumbnail"));
      img.alt = file.filename;
      img.decoding = "async";
      thumbnail(file.id).then(
        (src) => {
          img.src = src;
        },
        () => figure.classList.add("broken"),
      );
      figure.append(img, el("figcaption", "", file.filename));
      list.append(figure);
    } else {
      list.append(fileChip(file));
    }
  }
  return list;
}

/** @param {Shown} file */
function fileChip(file) {
  const chip = el("div", "attachment file");
  if (file.id) chip.dataset.fileId = file.id;
  const text = el("span", "attachment-text");
  text.append(
    el("span", "attachment-name", file.filename),
    el("span", "attachment-meta", `${typeLabel(file.content_type, file.filename)} · ${formatBytes(file.bytes)}`),
  );
  chip.append(icon("file"), text);
  return chip;
}

function renderAttachments() {
  ui.attachments.hidden = !state.attachments.length;
  ui.attachments.replaceChildren(...state.attachments.map((item) => item.chip));
}

/**
 * Take an attachment off the composer. An upload still running is cancelled.
 * @param {Pending} item
 * @param {{keepUpload?: boolean}} [how]
 */
function removeAttachment(item, how = {}) {
  state.attachments = state.attachments.filter((other) => other !== item);
  if (!how.keepUpload && !item.uploaded) item.controller.abort();
  renderAttachments();
}

/** Attach files to the next message: each uploads at once, its chip showing the progress. @param {File[]} files */
function addFiles(files) {
  if (!localStorage.getItem(KEY_STORAGE)) {
    openKeyDialog();
    return;
  }
  for (const file of files) {
    const chip = el("div", "attachment pending-file");
    chip.dataset.state = "uploading";
    const text = el("span", "attachment-text");
    const type = typeLabel(file.type, file.name);
    text.append(el("span", "attachment-name", file.name), el("span", "attachment-meta", `${type} · ${formatBytes(file.size)}`));
    const progress = /** @type {HTMLProgressElement} */ (el("progress", "upload-progress"));
    progress.max = file.size || 1;
    progress.value = 0;
    progress.setAttribute("aria-label", `Uploading ${file.name}`);
    const remove = /** @type {HTMLButtonElement} */ (el("button", "icon-button attachment-remove"));
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${file.name}`);
    remove.append(icon("close"));
    chip.append(icon(file.type.startsWith("image/") ? "paperclip" : "file"), text, progress, remove);
    const controller = new AbortController();
    /** @type {Pending} */
    const item = { file, chip, uploaded: null, done: Promise.resolve(null), controller };
    item.done = state.client
      .uploadFile(file, {
        signal: controller.signal,
        onProgress: ({ loaded, total }) => {
          progress.max = total || 1;
          progress.value = loaded;
        },
      })
      .then(
        (uploaded) => {
          item.uploaded = uploaded;
          chip.dataset.state = "uploaded";
          chip.dataset.fileId = uploaded.id;
          progress.value = progress.max;
          progress.hidden = true;
          return uploaded;
        },
        (error) => {
          if (state.attachments.includes(item)) {
            removeAttachment(item, { keepUpload: true });
            showError(error);
          }
          return null;
        },
      );
    remove.addEventListener("click", () => removeAttachment(item));
    state.attachments.push(item);
  }
  renderAttachments();
}

ui.attach.addEventListener("click", () => ui.fileInput.click());
ui.fileInput.addEventListener("change", () => {
  addFiles(Array.from(/** @type {FileList} */ (ui.fileInput.files)));
  ui.fileInput.value = "";
});

/** @param {DragEvent} event */
function carriesFiles(event) {
  return Array.from(event.dataTransfer?.types ?? []).includes("Files");
}
let dragDepth = 0;
ui.chat.addEventListener("dragenter", (/** @type {DragEvent} */ event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  ui.chat.classList.add("dropping");
});
ui.chat.addEventListener("dragover", (/** @type {DragEvent} */ event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
});
ui.chat.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.chat.classList.remove("dropping");
});
ui.chat.addEventListener("drop", (/** @type {DragEvent} */ event) => {
  dragDepth = 0;
  ui.chat.classList.remove("dropping");
  const files = Array.from(event.dataTransfer?.files ?? []);
  if (!files.length) return;
  event.preventDefault();
  addFiles(files);
});
ui.input.addEventListener("paste", (/** @type {ClipboardEvent} */ event) => {
  const files = Array.from(event.clipboardData?.files ?? []);
  if (!files.length) return;
  event.preventDefault();
  addFiles(files);
});

// ---------------------------------------------------------------- start

async function start() {
  updateKeyLabel();
  if (!localStorage.getItem(KEY_STORAGE)) {
    showSession(null);
    openKeyDialog();
    return;
  }
  if (!(await loadSessions())) return;
  loadUsage();
  loadConfig();
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted.startsWith("sess_")) await selectSession(wanted);
  else showSession(null);
  document.documentElement.dataset.ready = "true";
}

window.addEventListener("hashchange", () => {
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted.startsWith("sess_") && wanted !== state.sessionId) selectSession(wanted);
});

start();
