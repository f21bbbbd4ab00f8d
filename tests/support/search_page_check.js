// Runs the digest page's real scripts (static/digest.js, then static/search.js) under Node
// over the real index.html, parsed into a small DOM of its own (no browser, no dependency),
// with fetch answering canned API replies. Checks what the search box does: the query read
// from and written to the URL, the /v1/search calls, the hits rendered with <mark>ed words as
// elements and the feed's text as text, paging, the empty query, an error reply.
// Usage: node search_page_check.js WEB_DIR   (exit 0: every check passed)
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const webDir = process.argv[2];
const VOID = new Set(["meta", "link", "input", "br", "img", "hr"]);

// --- a small DOM ---------------------------------------------------------------------------
class Node_ {
  constructor(tag, attrs = {}) {
    this.tagName = tag.toUpperCase();
    this.attrs = { ...attrs };
    this.children = [];
    this.parent = null;
    this.listeners = {};
    this.dataset = {};
    this.value = attrs.value || "";
    this.hidden = "hidden" in attrs;
    this.options = [];
    if (tag === "template") this.content = new Node_("#fragment");
  }
  get id() { return this.attrs.id || ""; }
  get className() { return this.attrs.class || ""; }
  set className(v) { this.attrs.class = v; }
  get classList() {
    const node = this;
    const set = () => new Set(node.className.split(/\s+/).filter(Boolean));
    return {
      add: (...c) => { node.className = [...new Set([...set(), ...c])].join(" "); },
      remove: (...c) => { node.className = [...set()].filter((x) => !c.includes(x)).join(" "); },
      contains: (c) => set().has(c),
    };
  }
  get firstElementChild() { return this.children.find((c) => c instanceof Node_) || null; }
  get textContent() {
    return this.children.map((c) => (typeof c === "string" ? c : c.textContent)).join("");
  }
  set textContent(v) { this.replaceChildren(String(v)); }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  append(...nodes) {
    for (const n of nodes) {
      if (n instanceof Node_ && n.tagName === "#FRAGMENT") { this.append(...n.children); continue; }
      if (n instanceof Node_) { if (n.parent) n.remove(); n.parent = this; }
      this.children.push(n instanceof Node_ ? n : String(n));
    }
  }
  replaceChildren(...nodes) { this.children = []; this.append(...nodes); }
  remove() {
    if (this.parent) this.parent.children = this.parent.children.filter((c) => c !== this);
    this.parent = null;
  }
  cloneNode() {
    const copy = new Node_(this.tagName.toLowerCase(), this.attrs);
    copy.hidden = this.hidden;
    copy.append(...this.children.map((c) => (typeof c === "string" ? c : c.cloneNode())));
    return copy;
  }
  *walk() {
    for (const c of this.children) if (c instanceof Node_) { yield c; yield* c.walk(); }
    if (this.content) yield* this.content.walk();
  }
  querySelector(sel) {
    for (const n of this.walk()) {
      if (sel.startsWith(".") ? n.classList.contains(sel.slice(1)) : n.tagName === sel.toUpperCase()) return n;
    }
    return null;
  }
  querySelectorAll(sel) { return [...this.walk()].filter((n) => n.classList.contains(sel.slice(1))); }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  dispatch(type, extra = {}) {
    const event = { type, defaultPrevented: false, preventDefault() { this.defaultPrevented = true; }, ...extra };
    for (const fn of this.listeners[type] || []) fn(event);
    return event;
  }
  click() { this.dispatch("click"); }
  focus() { document.activeElement = this; }
  select() {}
  add(option) { this.options.push(option); this.append(option); }
}

function parse(html) {
  const root = new Node_("#document");
  const stack = [root];
  const top = () => { const t = stack[stack.length - 1]; return t.content || t; };
  const re = /<!--[\s\S]*?-->|<!doctype[^>]*>|<\/([a-z0-9]+)\s*>|<([a-z0-9]+)((?:\s+[^\s=>]+(?:=(?:"[^"]*"|'[^']*'|[^\s>]+))?)*)\s*\/?>|([^<]+)/gi;
  for (const m of html.matchAll(re)) {
    if (m[1]) {
      const at = stack.map((n) => n.tagName).lastIndexOf(m[1].toUpperCase());
      if (at > 0) stack.length = at;
      continue;
    }
    if (m[2]) {
      const attrs = {};
      for (const a of m[3].matchAll(/([^\s=]+)(?:=(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?/g)) {
        attrs[a[1]] = a[2] ?? a[3] ?? a[4] ?? "";
      }
      const node = new Node_(m[2].toLowerCase(), attrs);
      top().append(node);
      if (!VOID.has(m[2].toLowerCase())) stack.push(node);
      continue;
    }
    if (m[4] && m[4].trim()) top().append(m[4].replace(/\s+/g, " "));
  }
  return root;
}

// --- the page ------------------------------------------------------------------------------
const html = fs.readFileSync(path.join(webDir, "index.html"), "utf8")
  .replace(/<noscript>[\s\S]*?<\/noscript>/g, "");
const root = parse(html);
const byId = (id) => [...root.walk()].find((n) => n.id === id) || null;
const body = root.querySelector("body");
const document = {
  body, activeElement: body, hidden: false, listeners: {},
  getElementById: byId,
  createElement: (tag) => new Node_(tag),
  createDocumentFragment: () => new Node_("#fragment"),
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); },
};
const location = { pathname: "/", search: "?q=storm%20OR%20flood" };
const history = {
  pushed: [],
  pushState(_, __, url) { this.pushed.push(url); setUrl(url); },
  replaceState(_, __, url) { setUrl(url); },
};
function setUrl(url) { location.search = url.startsWith("?") ? url : ""; }

const calls = [];
const replies = [];
function fetch(url) {
  calls.push(url);
  if (url.startsWith("/v1/stories")) {
    return Promise.resolve(reply(200, { facets: { topics: [], sources: [] }, stories: [], count: 0, ranking: null }));
  }
  const next = replies.shift();
  assert.ok(next, `unexpected call ${url}`);
  return Promise.resolve(reply(next.status, next.body));
}
function reply(status, payload) {
  return { ok: status < 400, status, json: () => Promise.resolve(payload) };
}
function hit(id, extra = {}) {
  return {
    id, title: `Title ${id}`, url: `https://example.test/${id}`, link: `https://example.test/${id}`,
    source: "Test Wire", published: new Date(Date.now() - 3 * 3600e3).toISOString(),
    summary: "A storm hit.", importance: 70, topics: ["weather"],
    snippet: "A storm hit the <script>x</script> coast.", snippet_from: "summary",
    highlights: [[2, 7]], snippet_html: "", score: 0.3,
    score_parts: { relevance: 0.5, recency_factor: 0.9, importance_factor: 0.85, age_h: 3, half_life_h: 24 },
    ...extra,
  };
}
function page(q, hits, total, offset, next) {
  return { status: 200, body: { q, count: hits.length, total, offset, next_offset: next, note: null, hits } };
}

class Option_ extends Node_ {
  constructor(text, value) { super("option", { value }); this.textContent = text; this.value = value; }
}
const sandbox = {
  document, location, history, fetch, window: {}, console, URLSearchParams, Intl, Date, Math,
  Number, String, Promise, Map, Set, Object, Array, JSON, Error, AbortController,
  setTimeout: () => 0, clearTimeout: () => {}, Option: Option_,
};
sandbox.window = sandbox;
sandbox.addEventListener = (type, fn) => { (document.listeners["window:" + type] ||= []).push(fn); };
vm.createContext(sandbox);
const settle = () => new Promise((r) => setImmediate(r));

(async () => {
  const section = byId("search-results");
  const list = byId("hits");
  const status = byId("search-status");
  const more = byId("search-more");
  assert.ok(section.hidden, "results hidden before any search");

  // 1. ?q= in the URL: searched on load, the box filled in
  replies.push(page("storm OR flood", [hit(1), hit(2, { importance: null, summary: null, topics: [], snippet_from: "text" })], 3, 0, 2));
  for (const file of ["digest.js", "search.js"]) {
    vm.runInContext(fs.readFileSync(path.join(webDir, "static", file), "utf8"), sandbox, { filename: file });
  }
  await settle(); await settle();
  const searches = calls.filter((c) => c.startsWith("/v1/search?"));
  assert.equal(searches.length, 1);
  const params = new URLSearchParams(searches[0].split("?")[1]);
  assert.equal(params.get("q"), "storm OR flood");
  assert.equal(params.get("offset"), "0");
  assert.equal(byId("q").value, "storm OR flood");
  assert.equal(section.hidden, false);
  assert.ok(body.classList.contains("searching"));
  const items = list.children;
  assert.equal(items.length, 2);
  const snippet = items[0].querySelector(".hit-snippet");
  const marks = snippet.children.filter((c) => typeof c !== "string");
  assert.deepEqual(marks.map((m) => [m.tagName, m.textContent]), [["MARK", "storm"]]);
  assert.equal(snippet.textContent, "A storm hit the <script>x</script> coast.");
  assert.ok(!snippet.querySelector("script"), "feed text became an element");
  assert.equal(items[0].querySelector(".badge").textContent, "70");
  assert.equal(items[0].querySelector(".story-link").attrs.href ?? items[0].querySelector(".story-link").href, "https://example.test/1");
  assert.equal(items[1].querySelector(".badge").textContent, "–");
  assert.ok(items[1].querySelector(".hit-pending"), "pending summary not marked");
  assert.equal(items[0].querySelector(".hit-pending"), null);
  assert.match(status.textContent, /3 articles match “storm OR flood” \(2 shown\)/);
  assert.equal(more.hidden, false);

  // 2. more results: the next offset, appended
  replies.push(page("storm OR flood", [hit(3)], 3, 2, null));
  more.click();
  await settle(); await settle();
  assert.equal(new URLSearchParams(calls.at(-1).split("?")[1]).get("offset"), "2");
  assert.equal(list.children.length, 3);
  assert.equal(list.children[2].querySelector(".story-rank").textContent, "3");
  assert.equal(more.hidden, true);

  // 3. a new query: pushed into the URL, a first page again, focus on the results' heading
  byId("q").value = "  bridge ";
  replies.push(page("bridge", [hit(4)], 1, 0, null));
  byId("search").dispatch("submit");
  await settle(); await settle();
  assert.equal(history.pushed.at(-1), "?q=bridge");
  assert.equal(list.children.length, 1);
  assert.equal(document.activeElement, byId("search-heading"));
  assert.match(byId("search-heading").textContent, /bridge/);

  // 4. an error reply is said in words
  byId("q").value = "x";
  replies.push({ status: 422, body: { error: { message: "query.q: too long" } } });
  byId("search").dispatch("submit");
  await settle(); await settle();
  assert.match(status.textContent, /The search failed: query.q: too long/);

  // 5. an empty box: back to the stories, q gone from the URL
  byId("q").value = "";
  byId("search").dispatch("submit");
  await settle();
  assert.equal(section.hidden, true);
  assert.ok(!body.classList.contains("searching"));
  assert.ok(!location.search.includes("q="));

  // 6. the digest's own URL writing keeps ?q=
  location.search = "?q=storm";
  byId("window").value = "72";
  byId("window").dispatch("change");
  await settle();
  assert.match(location.search, /q=storm/);
  assert.match(location.search, /window=72/);
  console.log("search page: all checks passed");
})().catch((err) => { console.error(err); process.exit(1); });
