// A tiny Markdown renderer that builds DOM nodes and never parses HTML.
//
// Why hand-written: the playground has no build step and may not load code from a CDN (its
// Content-Security-Policy is `default-src 'self'`), so a library would have to be vendored; and the usual
// ones produce an HTML string that then needs a sanitizer. Here model output only ever reaches the page
// through `document.createTextNode` / `textContent`, so `<script>` or `<img onerror=…>` in an answer is
// shown as the text it is. Links are kept only for http(s) URLs.
//
// Supported: paragraphs (single newlines kept as line breaks), fenced and indented code blocks, headings,
// bullet and numbered lists (one level of nesting), block quotes, horizontal rules, GitHub's pipe tables,
// inline code, bold, italic, strikethrough, backslash escapes, [links](https://…) and bare https:// URLs. It
// re-renders the whole text on every update, which is what a streaming answer needs: an unclosed ``` fence
// renders as code so far, and a table's header row is a paragraph until its delimiter row has come.

/**
 * @param {string} tag
 * @param {string} [className]
 * @returns {HTMLElement}
 */
function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/**
 * A link target if it is an absolute http(s) URL, else null.
 * @param {string} href
 * @returns {string | null}
 */
export function safeHref(href) {
  try {
    const url = new URL(href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1,2: code span
    /\[([^\]\n]+)\]\(([^()\s]+)(?:\s+"[^"\n]*")?\)/.source, // 3,4: [text](href "title")
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 5: **bold**
    /__(?=\S)([\s\S]*?\S)__(?!\w)/.source, // 6: __bold__
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/.source, // 7: *italic*
    /(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source, // 8: _italic_
    /~~(?=\S)([\s\S]*?\S)~~/.source, // 9: ~~strike~~
    /(https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]])/.source, // 10: a bare URL
    /\\([!-/:-@[-`{-~])/.source, // 11: a backslash-escaped punctuation mark, shown as itself
  ].join("|"),
);

/**
 * Appends inline Markdown as nodes.
 * @param {Node} parent
 * @param {string} text
 */
export function renderInline(parent, text) {
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      parent.appendChild(document.createTextNode(rest));
      return;
    }
    if (match.index > 0) parent.appendChild(document.createTextNode(rest.slice(0, match.index)));
    const [whole, , code, linkText, linkHref, bold1, bold2, em1, em2, strike, bare, escaped] = match;
    if (code !== undefined) {
      const node = el("code");
      // A code span's content is trimmed of one surrounding space, as CommonMark does.
      node.textContent = /^ .* $/.test(code) && code.trim() ? code.slice(1, -1) : code;
      parent.appendChild(node);
    } else if (linkText !== undefined) {
      const href = safeHref(linkHref);
      if (href) {
        const link = /** @type {HTMLAnchorElement} */ (el("a"));
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener noreferrer nofollow";
        renderInline(link, linkText);
        parent.appendChild(link);
      } else {
        parent.appendChild(document.createTextNode(whole));
      }
    } else if (bold1 !== undefined || bold2 !== undefined) {
      const node = el("strong");
      renderInline(node, /** @type {string} */ (bold1 ?? bold2));
      parent.appendChild(node);
    } else if (em1 !== undefined || em2 !== undefined) {
      const node = el("em");
      renderInline(node, /** @type {string} */ (em1 ?? em2));
      parent.appendChild(node);
    } else if (strike !== undefined) {
      const node = el("del");
      renderInline(node, strike);
      parent.appendChild(node);
    } else if (bare !== undefined) {
      const href = safeHref(bare);
      if (href) {
        const link = /** @type {HTMLAnchorElement} */ (el("a"));
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener noreferrer nofollow";
        link.textContent = bare;
        parent.appendChild(link);
      } else {
        parent.appendChild(document.createTextNode(bare));
      }
    } else if (escaped !== undefined) {
      parent.appendChild(document.createTextNode(escaped));
    }
    rest = rest.slice(match.index + whole.length);
  }
}

/**
 * Appends lines of inline Markdown, keeping single newlines as line breaks.
 * @param {Node} parent
 * @param {string[]} lines
 */
function renderLines(parent, lines) {
  lines.forEach((line, index) => {
    if (index > 0) parent.appendChild(el("br"));
    renderInline(parent, line);
  });
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+\s*)?$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const BULLET = /^( *)([-*+])\s+(.*)$/;
const ORDERED = /^( *)(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const TABLE_DELIMITER = /^ {0,3}\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

/**
 * A table row's cells: split at the pipes that are not escaped, the outer ones dropped.
 * @param {string} line
 * @returns {string[]}
 */
function tableCells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

/**
 * Whether a table starts at lines[i]: a header row, then a delimiter row with as many cells.
 * @param {string[]} lines
 * @param {number} i
 */
function tableStarts(lines, i) {
  const delimiter = lines[i + 1];
  return (
    delimiter !== undefined &&
    lines[i].includes("|") &&
    delimiter.includes("|") &&
    TABLE_DELIMITER.test(delimiter) &&
    tableCells(lines[i]).length === tableCells(delimiter).length
  );
}

/** @param {string} line */
function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) || ORDERED.test(line) || QUOTE.test(line);
}

/**
 * Renders Markdown into a fragment of DOM nodes (text only ever as text nodes).
 * @param {string} source
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(fragment, source.replace(/\r\n?/g, "\n").split("\n"));
  return fragment;
}

/**
 * @param {Node} parent
 * @param {string[]} lines
 */
function renderBlocks(parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !new RegExp(`^ {0,3}${marker[0]}{${marker.length},}\\s*$`).test(lines[i])) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or the end of a still-streaming answer)
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.appendChild(code);
      parent.appendChild(pre);
      continue;
    }
    if (/^( {4}|\t)/.test(line)) {
      const body = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || !lines[i].trim())) {
        body.push(lines[i].replace(/^( {4}|\t)/, ""));
        i += 1;
      }
      while (body.length && !body[body.length - 1].trim()) body.pop();
      const pre = el("pre");
      const code = el("code");
      code.textContent = body.join("\n");
      pre.appendChild(code);
      parent.appendChild(pre);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const node = el(`h${Math.min(6, heading[1].length + 2)}`);
      renderInline(node, heading[2]);
      parent.appendChild(node);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.appendChild(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        body.push(/** @type {RegExpExecArray} */ (QUOTE.exec(lines[i]))[1]);
        i += 1;
      }
      const quote = el("blockquote");
      renderBlocks(quote, body);
      parent.appendChild(quote);
      continue;
    }
    if (BULLET.test(line) || ORDERED.test(line)) {
      i = renderList(parent, lines, i);
      continue;
    }
    if (tableStarts(lines, i)) {
      i = renderTable(parent, lines, i);
      continue;
    }
    const paragraph = [];
    while (
      i < lines.length &&
      lines[i].trim() &&
      (paragraph.length === 0 || !(startsBlock(lines[i]) || tableStarts(lines, i)))
    ) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    const p = el("p");
    renderLines(p, paragraph);
    parent.appendChild(p);
  }
}

/**
 * A list starting at lines[start]; returns the index after it.
 * @param {Node} parent
 * @param {string[]} lines
 * @param {number} start
 * @returns {number}
 */
function renderList(parent, lines, start) {
  const first = /** @type {RegExpExecArray} */ (BULLET.exec(lines[start]) || ORDERED.exec(lines[start]));
  const ordered = !BULLET.test(lines[start]);
  const indent = first[1].length;
  const list = el(ordered ? "ol" : "ul");
  if (ordered && first[2] !== "1") list.setAttribute("start", String(Number.parseInt(first[2], 10)));
  let i = start;
  /** @type {HTMLElement | null} */
  let item = null;
  /** @type {string[]} */
  let itemLines = [];
  /** @type {string[]} */
  let nested = [];
  const flush = () => {
    if (!item) return;
    renderLines(item, itemLines);
    if (nested.length) renderBlocks(item, nested);
    list.appendChild(item);
  };
  while (i < lines.length) {
    const line = lines[i];
    const marker = (ordered ? ORDERED : BULLET).exec(line);
    if (marker && marker[1].length <= indent + 1) {
      flush();
      item = el("li");
      itemLines = [marker[3]];
      nested = [];
      i += 1;
      continue;
    }
    if (!line.trim()) {
      // A blank line ends the list unless the next line continues it (indented, or another item).
      const next = lines[i + 1];
      if (next !== undefined && (/^\s{2,}\S/.test(next) || (ordered ? ORDERED : BULLET).test(next))) {
        i += 1;
        continue;
      }
      break;
    }
    const leading = /** @type {RegExpExecArray} */ (/^ */.exec(line))[0].length;
    if (leading > indent && (BULLET.test(line) || ORDERED.test(line) || nested.length)) {
      nested.push(line.slice(Math.min(leading, indent + 2)));
      i += 1;
      continue;
    }
    if (leading > indent || !startsBlock(line)) {
      if (nested.length) nested.push(line.trim());
      else itemLines.push(line.trim());
      i += 1;
      continue;
    }
    break;
  }
  flush();
  parent.appendChild(list);
  return i;
}

/**
 * A table starting at lines[start] (its header row); returns the index after it. Body rows go on until a blank
 * line or another block; each has the header's number of cells (missing ones empty, extra ones dropped).
 * @param {Node} parent
 * @param {string[]} lines
 * @param {number} start
 * @returns {number}
 */
function renderTable(parent, lines, start) {
  const header = tableCells(lines[start]);
  const aligns = tableCells(lines[start + 1]).map((cell) => {
    const left = cell.startsWith(":");
    const right = cell.endsWith(":");
    return left && right ? "center" : right ? "right" : left ? "left" : "";
  });
  /**
   * @param {HTMLElement} section
   * @param {string[]} cells
   * @param {string} tag
   */
  const row = (section, cells, tag) => {
    const tr = el("tr");
    header.forEach((_, index) => {
      const cell = el(tag);
      if (aligns[index]) cell.dataset.align = aligns[index];
      renderInline(cell, cells[index] ?? "");
      tr.appendChild(cell);
    });
    section.appendChild(tr);
  };
  const table = el("table");
  const head = el("thead");
  row(head, header, "th");
  table.appendChild(head);
  let i = start + 2;
  const body = el("tbody");
  while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) {
    row(body, tableCells(lines[i]), "td");
    i += 1;
  }
  if (body.childNodes.length) table.appendChild(body);
  // Wide tables scroll sideways on their own instead of widening the page.
  const wrap = el("div", "table-wrap");
  wrap.appendChild(table);
  parent.appendChild(wrap);
  return i;
}
