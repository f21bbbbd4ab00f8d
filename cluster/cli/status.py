"""``newsdesk status``: what the stack is doing, from PostgreSQL and (when it answers) the Serve
app's ``/v1/stats``: feeds by state, the backlog of articles waiting for a summary, throughput,
stories, and the cache hit rate."""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer
from rich.table import Table

from cluster.cli.common import console, run, settings
from cluster.settings import Settings

_COUNTS = """
SELECT
  (SELECT count(*) FROM articles) AS articles,
  (SELECT count(*) FROM articles WHERE fetched_at > now() - interval '1 day') AS ingested_24h,
  (SELECT count(*) FROM articles a
     WHERE a.published_at >= now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM results r
                       WHERE r.article_id = a.id AND r.status = 'ok')) AS backlog,
  (SELECT count(*) FROM results WHERE status = 'ok'
     AND created_at > now() - interval '1 hour') AS summarized_1h,
  (SELECT count(*) FROM results WHERE status = 'ok'
     AND created_at > now() - interval '1 day') AS summarized_24h,
  (SELECT count(*) FROM results WHERE status = 'error') AS failed,
  (SELECT count(*) FROM stories WHERE last_published_at > now() - interval '1 day')
     AS stories_24h,
  (SELECT count(*) FROM stories WHERE last_published_at > now() - interval '1 day'
     AND n_articles > 1) AS multi_article_stories_24h,
  (SELECT count(*) FROM articles a
     WHERE a.published_at >= now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM story_articles s WHERE s.article_id = a.id))
     AS story_backlog
"""


async def collect_status(s: Settings, api_url: str | None) -> dict[str, Any]:
    """Everything ``newsdesk status`` shows, as one JSON-able dict."""
    from core import db

    pool = await db.create_pool(s)
    try:
        feeds = {
            r["status"]: r["n"]
            for r in await pool.fetch("SELECT status, count(*) AS n FROM feeds GROUP BY status")
        }
        failing = await pool.fetch(
            "SELECT url, status, last_error FROM feeds WHERE last_error IS NOT NULL "
            "ORDER BY consecutive_failures DESC, id LIMIT 5"
        )
        counts = dict(await pool.fetchrow(_COUNTS, s.summarize_loop_max_age_h * 3600.0) or {})
    finally:
        await pool.close()
    out: dict[str, Any] = {
        "feeds": feeds,
        "failing_feeds": [dict(r) for r in failing],
        **counts,
        "articles_per_hour_last_hour": counts["summarized_1h"],
        "api": None,
    }
    if api_url:
        out["api"] = await _api_stats(api_url, s)
    return out


async def _api_stats(api_url: str, s: Settings) -> dict[str, Any]:
    headers = {"X-API-Key": s.api_key.get_secret_value()} if s.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{api_url.rstrip('/')}/v1/stats", headers=headers)
    except httpx.HTTPError as exc:
        return {"url": api_url, "error": f"not answering ({type(exc).__name__})"}
    if response.status_code != 200:
        return {"url": api_url, "error": f"HTTP {response.status_code}"}
    stats = response.json()
    cache = (stats.get("lookup") or {}).get("cache") or {}
    loop = stats.get("summarization_loop") or {}
    return {
        "url": api_url,
        "cache_hit_rate": cache.get("hit_rate"),
        "cache_lookups": cache.get("lookups"),
        "redis": cache.get("redis"),
        "loop": loop.get("outcomes"),
        "stories": loop.get("stories"),
    }


def _pct(x: float | None) -> str:
    return "n/a (no lookups yet)" if x is None else f"{100 * x:.1f}%"


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        api: str = typer.Option(
            None, help="Base URL of the Serve app. Default: http://SERVE_HOST:SERVE_PORT."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Feeds, backlog of unsummarized articles, throughput, stories, cache hit rate."""
        s = settings()
        url = api or f"http://{s.serve_host}:{s.serve_port}"
        data = run(collect_status(s, url))
        if as_json:
            console.print_json(json.dumps(data, default=str))
            return
        table = Table(title="newsdesk status", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value", overflow="fold")
        feeds = ", ".join(f"{n} {state}" for state, n in sorted(data["feeds"].items()))
        table.add_row("feeds", feeds or "none (newsdesk feeds add URL)")
        for f in data["failing_feeds"]:
            table.add_row("  failing", f"{f['url']} ({f['status']}): {f['last_error']}")
        table.add_row(
            "articles", f"{data['articles']} stored, {data['ingested_24h']} in the last 24 h"
        )
        table.add_row(
            "backlog",
            f"{data['backlog']} articles waiting for a summary "
            f"(published in the last {s.summarize_loop_max_age_h:g} h); "
            f"{data['failed']} failed",
        )
        table.add_row(
            "throughput",
            f"{data['summarized_1h']} summaries in the last hour, {data['summarized_24h']} in 24 h",
        )
        table.add_row(
            "stories",
            f"{data['stories_24h']} in the last 24 h ({data['multi_article_stories_24h']} with "
            f"several articles); {data['story_backlog']} articles not grouped yet",
        )
        api_info = data["api"] or {}
        if api_info.get("error"):
            table.add_row("serve app", f"{api_info['url']}: {api_info['error']}")
        else:
            table.add_row(
                "cache hit rate",
                f"{_pct(api_info.get('cache_hit_rate'))} of {api_info.get('cache_lookups')} "
                f"lookups (redis: {api_info.get('redis')})",
            )
            table.add_row("serve app", f"{api_info['url']} (digest page at /)")
        console.print(table)
