// Newsdesk digest page: reads GET /v1/stories and re-reads it on a filter change and every
// minute, without reloading. Vanilla JS, no dependencies. Data from feeds is only ever put
// into the page as text (textContent), and links only when they are http(s) or same-site.
"use strict";

(function () {
  const REFRESH_MS = 60000;
  const LIMIT = 30;
  const $ = (id) => document.getElementById(id);
  const form = $("filters");
  const list = $("stories");
  const statusEl = $("status");
  const errorEl = $("error");
  const emptyEl = $("empty");
  const template = $("story-template");
  const fields = {
    minImportance: $("min-importance"),
    topic: $("topic"),
    source: $("source"),
    window: $("window"),
  };
  let controller = null;
  let timer = null;
  let lastOk = null;

  // --- state <-> URL ------------------------------------------------------------------
  function readUrl() {
    const q = new URLSearchParams(location.search);
    const min = Number(q.get("min_importance"));
    fields.minImportance.value = Number.isFinite(min) ? String(Math.min(100, Math.max(0, min))) : "0";
    ensureOption(fields.topic, q.get("topic") || "");
    ensureOption(fields.source, q.get("source") || "");
    const win = q.get("window");
    if (win && [...fields.window.options].some((o) => o.value === win)) fields.window.value = win;
    showMin();
  }

  function filters() {
    return {
      min_importance: Number(fields.minImportance.value) || 0,
      topic: fields.topic.value,
      source: fields.source.value,
      window: Number(fields.window.value) || 24,
    };
  }

  function writeUrl(f) {
    // the filters' own keys only: others (the search box's ?q=) stay as they are
    const q = new URLSearchParams(location.search);
    for (const key of ["min_importance", "topic", "source", "window"]) q.delete(key);
    if (f.min_importance > 0) q.set("min_importance", String(f.min_importance));
    if (f.topic) q.set("topic", f.topic);
    if (f.source) q.set("source", f.source);
    if (f.window !== 24) q.set("window", String(f.window));
    const url = q.toString() ? `?${q}` : location.pathname;
    history.replaceState(null, "", url);
  }

  function apiUrl(f) {
    const since = new Date(Date.now() - f.window * 3600 * 1000).toISOString();
    const q = new URLSearchParams({ since, limit: String(LIMIT) });
    if (f.min_importance > 0) q.set("min_importance", String(f.min_importance));
    if (f.topic) q.set("topic", f.topic);
    if (f.source) q.set("source", f.source);
    return `/v1/stories?${q}`;
  }

  // --- helpers -------------------------------------------------------------------------
  function ensureOption(select, value) {
    if (value && ![...select.options].some((o) => o.value === value)) {
      select.add(new Option(value, value));
    }
    select.value = value;
  }

  function fillSelect(select, values, allLabel) {
    const current = select.value;
    const wanted = [...new Set(values)].sort((a, b) => a.localeCompare(b));
    if (current && !wanted.includes(current)) wanted.push(current);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\u0000") === wanted.join("\u0000")) return;
    select.replaceChildren(new Option(allLabel, ""), ...wanted.map((v) => new Option(v, v)));
    select.value = current;
  }

  function safeHref(url, fallback) {
    if (typeof url === "string") {
      if (/^https?:\/\//i.test(url)) return url;
      if (url.startsWith("/") && !url.startsWith("//")) return url;
    }
    return fallback;
  }

  function level(importance) {
    if (importance >= 80) return "major";
    if (importance >= 60) return "significant";
    if (importance >= 40) return "notable";
    return "minor";
  }

  function ago(iso) {
    const minutes = (Date.now() - new Date(iso).getTime()) / 60000;
    if (minutes < 1) return "just now";
    if (minutes < 60) return `${Math.floor(minutes)} min ago`;
    const hours = minutes / 60;
    if (hours < 48) return `${Math.floor(hours)} h ago`;
    return `${Math.floor(hours / 24)} d ago`;
  }

  const fullDate = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  // The API's JSON, or an Error with the API's message (its error body) or the status.
  async function getJson(url, signal) {
    const response = await fetch(url, { signal, headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error(body && body.error ? body.error.message : `HTTP ${response.status}`);
    }
    return body;
  }

  // shared with static/search.js (loaded after this file): one wording of times and levels
  globalThis.newsdeskPage = Object.freeze({ el, safeHref, level, ago, fullDate, getJson });

  function showMin() {
    $("min-importance-value").textContent = fields.minImportance.value;
  }

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.className = `status ${kind || ""}`;
  }

  // --- rendering -----------------------------------------------------------------------
  function renderStory(story, position) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.dataset.storyId = String(story.id);
    node.dataset.rank = String(position);
    node.dataset.importance = String(story.importance);
    node.dataset.score = String(story.rank);
    node.dataset.sources = story.sources.join("|");
    node.dataset.topics = story.topics.join("|");
    node.querySelector(".story-rank").textContent = String(position);

    const badge = node.querySelector(".badge");
    const lvl = level(story.importance);
    badge.textContent = String(Math.round(story.importance));
    badge.classList.add(lvl);
    badge.title = `Importance ${Math.round(story.importance)} of 100 (${lvl})`;
    badge.setAttribute("aria-label", badge.title);

    const link = node.querySelector(".story-link");
    link.textContent = story.title;
    link.href = safeHref(story.link, `/v1/stories`);
    node.querySelector(".story-summary").textContent = story.summary;
    // the article's own sentences (the model's summary failed the verifier): marked discreetly
    if (story.method !== "extractive") node.querySelector(".story-method").remove();

    const time = node.querySelector(".story-time");
    time.dateTime = story.last_published;
    time.textContent = ago(story.last_published);
    time.title = fullDate.format(new Date(story.last_published));

    const sources = node.querySelector(".story-sources");
    const firstBySource = new Map();
    for (const a of story.articles) {
      const name = a.source || "unnamed feed";
      if (!firstBySource.has(name)) firstBySource.set(name, a);
    }
    [...firstBySource.entries()].forEach(([name, a], i) => {
      if (i > 0) sources.append(", ");
      const s = el("a", name);
      s.href = safeHref(a.link, `/v1/articles/${a.id}`);
      sources.append(s);
    });

    const why = node.querySelector(".story-why");
    why.append(el("strong", "Why here: "), story.why);
    const p = story.rank_parts;
    why.title =
      `score ${story.rank.toFixed(1)} = importance ${p.importance.toFixed(0)}` +
      ` × ${p.source_factor.toFixed(2)} (${story.n_sources} source${story.n_sources === 1 ? "" : "s"})` +
      ` × ${p.recency_factor.toFixed(2)} (${p.age_h.toFixed(1)} h old, half-life ${p.half_life_h} h)`;

    const topics = node.querySelector(".story-topics");
    for (const t of story.topics) topics.append(el("li", t));
    if (!story.topics.length) topics.remove();

    const details = node.querySelector(".story-coverage");
    if (story.articles.length > 1) {
      details.querySelector("summary").textContent =
        `Coverage: ${story.n_articles} articles from ${story.n_sources} source${story.n_sources === 1 ? "" : "s"}`;
      const ul = details.querySelector(".coverage");
      for (const a of story.articles) {
        const li = el("li");
        li.append(el("span", `${a.source || "unnamed feed"}: `));
        const al = el("a", a.title || "(untitled)");
        al.href = safeHref(a.link, `/v1/articles/${a.id}`);
        li.append(al);
        const how = a.joined_by === "duplicate" ? "same text"
          : a.joined_by === "similar" ? `similar (${a.similarity.toFixed(2)})` : "first report";
        li.append(el("span", ` · ${ago(a.published)} · ${how}`, "how"));
        ul.append(li);
      }
    } else {
      details.remove();
    }
    return node;
  }

  function render(data, f) {
    fillSelect(fields.topic, data.facets.topics, "All topics");
    fillSelect(fields.source, data.facets.sources, "All sources");
    if (data.ranking) {
      const r = data.ranking;
      $("boost").textContent = `${Math.round(r.source_boost * 100)}%`;
      $("boost-cap").textContent = `+${Math.round((r.source_boost_cap - 1) * 100)}%`;
      $("half-life").textContent = `${r.half_life_h} hours`;
    }
    list.replaceChildren(...data.stories.map((s, i) => renderStory(s, i + 1)));
    const filtered = f.min_importance > 0 || f.topic || f.source;
    emptyEl.hidden = data.stories.length > 0;
    emptyEl.textContent = filtered
      ? "No story matches these filters. Lower the minimum importance or clear the filters."
      : "No stories yet in this period. New articles are summarized in the background; " +
        "they appear here within minutes.";
    const period = f.window === 24 ? "24 hours" : f.window === 72 ? "3 days" : "7 days";
    $("tagline").textContent = `Top stories of the last ${period}, ranked by importance`;
  }

  // --- loading -------------------------------------------------------------------------
  async function load() {
    const f = filters();
    writeUrl(f);
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = controller;
    const timeout = setTimeout(() => mine.abort(), 20000);
    document.body.classList.add("loading");
    try {
      const body = await getJson(apiUrl(f), mine.signal);
      render(body, f);
      errorEl.hidden = true;
      lastOk = new Date();
      const n = body.count;
      setStatus(`${n} ${n === 1 ? "story" : "stories"} · updated ${clock.format(lastOk)}`, "live");
    } catch (err) {
      if (mine.signal.aborted && controller !== mine) return; // replaced by a newer request
      const reason = err && err.name === "AbortError" ? "the server did not answer in time" : err.message;
      errorEl.textContent = `Could not refresh the stories: ${reason}.`;
      errorEl.hidden = false;
      setStatus(lastOk ? `showing stories from ${clock.format(lastOk)}` : "not loaded", "stale");
    } finally {
      clearTimeout(timeout);
      if (controller === mine) {
        controller = null;
        document.body.classList.remove("loading");
      }
      schedule();
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (!document.hidden) timer = setTimeout(load, REFRESH_MS);
  }

  let debounce = null;
  fields.minImportance.addEventListener("input", () => {
    showMin();
    clearTimeout(debounce);
    debounce = setTimeout(load, 350);
  });
  for (const name of ["topic", "source", "window"]) fields[name].addEventListener("change", load);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  form.addEventListener("reset", (event) => {
    event.preventDefault();
    fields.minImportance.value = "0";
    fields.topic.value = "";
    fields.source.value = "";
    fields.window.value = "24";
    showMin();
    load();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) load();
    else clearTimeout(timer);
  });

  readUrl();
  load();
})();
