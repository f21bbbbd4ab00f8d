// Newsdesk digest page, search box: reads GET /v1/search and shows the hits in place of the
// stories, in their style. The query lives in the URL (?q=), so a search can be linked, reloaded
// and gone back to; without JavaScript the form still submits ?q= to this page. Feed text is put
// into the page only as text nodes, matched words as <mark> elements built from the hit's
// highlight offsets (never innerHTML).
"use strict";

(function () {
  const LIMIT = 20;
  const $ = (id) => document.getElementById(id);
  const form = $("search");
  const box = $("q");
  const section = $("search-results");
  const heading = $("search-heading");
  const statusEl = $("search-status");
  const list = $("hits");
  const more = $("search-more");
  const template = $("hit-template");
  let controller = null;
  let current = { q: "", next: null, shown: 0 };

  // --- URL -------------------------------------------------------------------------------
  function queryInUrl() {
    return (new URLSearchParams(location.search).get("q") || "").trim();
  }

  function writeUrl(q) {
    const params = new URLSearchParams(location.search);
    if (q) params.set("q", q);
    else params.delete("q");
    const url = params.toString() ? `?${params}` : location.pathname;
    if (params.toString() !== location.search.replace(/^\?/, "")) history.pushState(null, "", url);
  }

  // the digest's helpers (static/digest.js, loaded first): the same wording, levels and links
  const { el, safeHref, level, ago, fullDate, getJson } = globalThis.newsdeskPage;

  // The snippet as text with the matched words in <mark>: [start, end) offsets from the API.
  function markedSnippet(text, highlights) {
    const frag = document.createDocumentFragment();
    let at = 0;
    for (const [start, end] of highlights) {
      if (start < at || end > text.length || end <= start) continue;
      if (start > at) frag.append(text.slice(at, start));
      frag.append(el("mark", text.slice(start, end)));
      at = end;
    }
    if (at < text.length) frag.append(text.slice(at));
    return frag;
  }

  // --- rendering -------------------------------------------------------------------------
  function renderHit(hit, position) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.dataset.articleId = String(hit.id);
    node.dataset.score = String(hit.score);
    node.querySelector(".story-rank").textContent = String(position);

    const badge = node.querySelector(".badge");
    if (hit.importance === null) {
      badge.textContent = "–";
      badge.classList.add("pending");
      badge.title = "Importance not rated yet: the summary is pending";
    } else {
      const lvl = level(hit.importance);
      badge.textContent = String(Math.round(hit.importance));
      badge.classList.add(lvl);
      badge.title = `Importance ${Math.round(hit.importance)} of 100 (${lvl})`;
    }
    badge.setAttribute("aria-label", badge.title);

    const link = node.querySelector(".story-link");
    link.textContent = hit.title || "(untitled)";
    link.href = safeHref(hit.link, `/v1/articles/${hit.id}`);

    const snippet = node.querySelector(".hit-snippet");
    snippet.append(markedSnippet(hit.snippet, hit.highlights));
    snippet.dataset.from = hit.snippet_from;

    const time = node.querySelector(".story-time");
    time.dateTime = hit.published;
    time.textContent = ago(hit.published);
    time.title = fullDate.format(new Date(hit.published));
    node.querySelector(".story-sources").textContent = hit.source || "unnamed feed";
    if (hit.summary !== null) node.querySelector(".hit-pending").remove();

    const p = hit.score_parts;
    const why = node.querySelector(".hit-why");
    why.append(
      el("strong", "Why here: "),
      `relevance ${p.relevance.toFixed(2)} × recency ${p.recency_factor.toFixed(2)}` +
        ` × importance ${p.importance_factor.toFixed(2)}`,
    );
    why.title =
      `score ${hit.score.toFixed(3)}: ${p.age_h.toFixed(1)} h old (half-life ${p.half_life_h} h)` +
      `, from the ${hit.snippet_from === "summary" ? "summary" : "article's text"}`;

    const topics = node.querySelector(".story-topics");
    for (const t of hit.topics) topics.append(el("li", t));
    if (!hit.topics.length) topics.remove();
    return node;
  }

  function describe(body) {
    if (body.note) return `Nothing to search for: ${body.note}.`;
    if (!body.total) return `No article matches “${body.q}”. Try fewer or other words.`;
    const shown = current.shown;
    const of = body.total > shown ? ` (${shown} shown)` : "";
    return `${body.total} ${body.total === 1 ? "article matches" : "articles match"} “${body.q}”${of}.`;
  }

  // --- loading ---------------------------------------------------------------------------
  async function run(q, offset, focus) {
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = controller;
    document.body.classList.add("searching");
    section.hidden = false;
    heading.textContent = `Results for “${q}”`;
    if (offset === 0) {
      list.replaceChildren();
      statusEl.textContent = "Searching…";
    }
    more.hidden = true;
    const params = new URLSearchParams({ q, limit: String(LIMIT), offset: String(offset) });
    try {
      const body = await getJson(`/v1/search?${params}`, mine.signal);
      if (offset === 0) current = { q, next: null, shown: 0 };
      list.append(...body.hits.map((h, i) => renderHit(h, offset + i + 1)));
      current.shown = offset + body.hits.length;
      current.next = body.next_offset;
      more.hidden = current.next === null;
      statusEl.textContent = describe(body);
      if (focus) heading.focus();
    } catch (err) {
      if (mine.signal.aborted) return; // replaced by a newer search
      statusEl.textContent = `The search failed: ${err.message}.`;
    } finally {
      if (controller === mine) controller = null;
    }
  }

  function clear() {
    if (controller) controller.abort();
    box.value = "";
    list.replaceChildren();
    section.hidden = true;
    document.body.classList.remove("searching");
    current = { q: "", next: null, shown: 0 };
  }

  function fromUrl() {
    const q = queryInUrl();
    box.value = q;
    if (q) run(q, 0, false);
    else clear();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = box.value.trim();
    writeUrl(q);
    if (q) run(q, 0, true);
    else clear();
  });
  more.addEventListener("click", () => {
    if (current.next !== null) run(current.q, current.next, false);
  });
  $("search-clear").addEventListener("click", () => {
    writeUrl("");
    clear();
    $("stories").focus();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && box.value === "" && current.q) $("search-clear").click();
  });
  // "/" focuses the box (as on many sites), unless one is typing in a field already
  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      box.focus();
      box.select();
    }
  });
  window.addEventListener("popstate", fromUrl);

  fromUrl();
})();
