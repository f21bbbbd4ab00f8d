"""The ranked digest (:func:`serving.stories.ranking.list_stories`) as RSS 2.0, Atom 1.0 and
JSON Feed 1.1, one item per story, in rank order.

Each item: the story's title and lead summary, its importance, its sources, the link of every
member article, its topics; an id that never changes as the story grows (a ``tag:`` URI of the
story id, RSS ``guid isPermaLink="false"``), ``published`` = its first article,
``updated`` = its last change (an article joined, or a member got its summary: see
:func:`serving.digest.store.stories_updated`). The feed's own ``updated`` is its newest
item's. RSS and Atom come from feedgen; what they have no element for (importance, sources)
is in the HTML content and in elements of the :data:`NEWSDESK_NS` namespace; JSON Feed is a
pydantic model (:mod:`serving.digest.schemas`) with a ``_newsdesk`` object per item.

The output is a function of the stored data, the query and the base URL only: no "now", no
"3 h ago", no rank score (its recency factor decays with the clock; the order does not, so an
item says its position instead). The route's ETag, made from a fingerprint of the data before
rendering, relies on that (:mod:`serving.http.routes.digest_feeds`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from serving.digest.schemas import (
    FeedArticle,
    JsonFeed,
    JsonFeedAuthor,
    JsonFeedItem,
    NewsdeskExtension,
)
from serving.stories.schemas import Story, StoryList

NEWSDESK_NS = "urn:x-newsdesk:digest"
ATOM_NS = "http://www.w3.org/2005/Atom"
TAG_DATE = "2026"  # the tag: URIs' date (RFC 4151): fixed, so the ids never change
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FORMATS = {
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "json": "application/feed+json",
}
TITLE = "Newsdesk · top stories"


@dataclass(frozen=True)
class FeedItem:
    story: Story
    position: int  # 1: the top story
    id: str
    link: str
    updated: datetime
    articles: list[FeedArticle]


@dataclass(frozen=True)
class DigestFeed:
    """A digest feed, whatever its format: absolute URLs, items in rank order."""

    title: str
    description: str
    home_url: str
    self_url: str
    alternates: dict[str, str]  # format -> its URL (the same query)
    updated: datetime
    items: list[FeedItem]


def absolute(base_url: str, link: str) -> str:
    """``link`` as an absolute URL: relative links (``/v1/articles/7``) go under ``base_url``
    (which may have a path, behind a proxy)."""
    if urlsplit(link).scheme:
        return link
    return base_url.rstrip("/") + "/" + link.lstrip("/")


def story_tag(base_url: str, story_id: int) -> str:
    """The story's permanent id: ``tag:HOST,2026:story/ID`` (RFC 4151)."""
    host = urlsplit(base_url).hostname or "localhost"
    return f"tag:{host},{TAG_DATE}:story/{story_id}"


def digest_feed(
    listing: StoryList,
    updated: dict[int, datetime],
    *,
    base_url: str,
    self_url: str,
    alternates: dict[str, str],
    filters: dict[str, object],
    empty_updated: datetime | None,
) -> DigestFeed:
    """The feed of ``listing`` (``updated``: each story's last change; ``filters``: label ->
    value, in the title when set; ``empty_updated``: the feed's ``updated`` when it has no
    item, None for the epoch)."""
    items = []
    for position, story in enumerate(listing.stories, 1):
        articles = [
            FeedArticle.model_construct(  # from validated StoryArticles: no need to redo it
                id=a.id,
                title=a.title or (a.summary or "")[:120] or f"article {a.id}",
                url=absolute(base_url, a.link),
                source=a.source or "unnamed feed",
                published=a.published,
                importance=a.importance,
            )
            for a in story.articles
        ]
        at = updated.get(story.id, story.last_published)
        items.append(
            FeedItem(
                story=story,
                position=position,
                id=story_tag(base_url, story.id),
                link=absolute(base_url, story.link),
                updated=at,
                articles=articles,
            )
        )
    newest = max((i.updated for i in items), default=empty_updated or EPOCH)
    shown = [
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in filters.items()
        if v is not None
    ]
    title = TITLE + "".join(f" · {s}" for s in shown)
    return DigestFeed(
        title=title,
        description="Same-story articles from many sources grouped, summarized and ranked by "
        "importance, sources and recency.",
        home_url=absolute(base_url, "/"),
        self_url=self_url,
        alternates=alternates,
        updated=newest,
        items=items,
    )


# --- what every format says of a story ------------------------------------------------------


def _line(story: Story) -> str:
    sources = f"{story.n_sources} source" + ("s" if story.n_sources != 1 else "")
    articles = f"{story.n_articles} article" + ("s" if story.n_articles != 1 else "")
    return f"Importance {story.importance:g} · {sources} · {articles}"


def content_text(item: FeedItem) -> str:
    s = item.story
    lines = [s.summary, "", _line(s), "Sources: " + ", ".join(s.sources)]
    if s.topics:
        lines.append("Topics: " + ", ".join(s.topics))
    return "\n".join(lines)


def content_html(item: FeedItem) -> str:
    s = item.story
    e = html.escape
    note = " <em>(the article's own sentences)</em>" if s.method == "extractive" else ""
    parts = [f"<p>{e(s.summary)}{note}</p>", f"<p>{e(_line(s))}</p>", "<ul>"]
    for a in item.articles:
        parts.append(
            f'<li><a href="{e(a.url)}">{e(a.title)}</a> — {e(a.source)}'
            + (f" (importance {a.importance:g})" if a.importance is not None else "")
            + "</li>"
        )
    parts.append("</ul>")
    if s.topics:
        parts.append(f"<p>Topics: {e(', '.join(s.topics))}</p>")
    return "".join(parts)


# --- RSS 2.0 and Atom 1.0 (feedgen) ----------------------------------------------------------


class _NewsdeskFeed(BaseExtension):
    """Declares :data:`NEWSDESK_NS` on the feed's root element."""

    def extend_ns(self) -> dict[str, str]:
        return {"newsdesk": NEWSDESK_NS}


class _NewsdeskEntry(BaseEntryExtension):
    """What RSS and Atom have no element for, in :data:`NEWSDESK_NS`; in RSS also
    ``atom:updated`` (RSS items have no updated time of their own)."""

    item: FeedItem | None = None

    def _add(self, entry: etree._Element) -> None:
        assert self.item is not None
        s = self.item.story
        for name, value in (
            ("importance", f"{s.importance:g}"),
            ("position", str(self.item.position)),
            ("articles", str(s.n_articles)),
            ("sources", str(s.n_sources)),
        ):
            etree.SubElement(entry, f"{{{NEWSDESK_NS}}}{name}").text = value
        for source in s.sources:
            etree.SubElement(entry, f"{{{NEWSDESK_NS}}}source").text = source

    def extend_rss(self, entry: etree._Element) -> etree._Element:
        assert self.item is not None
        etree.SubElement(entry, f"{{{ATOM_NS}}}updated").text = self.item.updated.isoformat()
        self._add(entry)
        return entry

    def extend_atom(self, entry: etree._Element) -> etree._Element:
        # every member article as a related link (here: feedgen 1.0 drops the rel and title
        # of an entry's links)
        assert self.item is not None
        for a in self.item.articles:
            etree.SubElement(
                entry,
                f"{{{ATOM_NS}}}link",
                href=a.url,
                rel="related",
                title=f"{a.source}: {a.title}",
            )
        self._add(entry)
        return entry


def _generator(feed: DigestFeed, fmt: str) -> FeedGenerator:
    fg = FeedGenerator()
    fg.register_extension("newsdesk", _NewsdeskFeed, _NewsdeskEntry)
    fg.id(feed.self_url)
    fg.title(feed.title)
    fg.description(feed.description)
    fg.subtitle(feed.description)
    fg.author({"name": "Newsdesk", "uri": feed.home_url})
    fg.link(href=feed.self_url, rel="self", type=FORMATS[fmt])
    for other, url in feed.alternates.items():
        if other != fmt:
            fg.link(href=url, rel="alternate", type=FORMATS[other])
    fg.link(href=feed.home_url, rel="alternate")  # the last alternate is RSS's <link>
    fg.language("en")
    fg.generator("Newsdesk")
    fg.updated(feed.updated)  # also the RSS lastBuildDate (else: now, and no stable ETag)
    for item in feed.items:
        s = item.story
        fe = fg.add_entry(order="append")
        fe.newsdesk.item = item
        fe.id(item.id)
        fe.title(s.title)
        fe.link(href=item.link, rel="alternate")
        if fmt == "atom":
            for source in s.sources:
                fe.author({"name": source})
        fe.summary(s.summary)
        fe.content(content_html(item), type="html" if fmt == "atom" else None)
        fe.published(s.first_published)
        fe.updated(item.updated)
        for topic in s.topics:
            fe.category(term=topic)
    return fg


def render_rss(feed: DigestFeed) -> bytes:
    return _generator(feed, "rss").rss_str(pretty=False)


def render_atom(feed: DigestFeed) -> bytes:
    return _generator(feed, "atom").atom_str(pretty=False)


# --- JSON Feed 1.1 ---------------------------------------------------------------------------


def json_feed(feed: DigestFeed) -> JsonFeed:
    items = [
        JsonFeedItem(
            id=item.id,
            url=item.link,
            title=item.story.title,
            content_text=content_text(item),
            content_html=content_html(item),
            summary=item.story.summary,
            date_published=item.story.first_published,
            date_modified=item.updated,
            authors=[JsonFeedAuthor(name=s) for s in item.story.sources],
            tags=item.story.topics,
            newsdesk=NewsdeskExtension(
                story_id=item.story.id,
                importance=item.story.importance,
                position=item.position,
                method=item.story.method,
                n_articles=item.story.n_articles,
                n_sources=item.story.n_sources,
                sources=item.story.sources,
                articles=item.articles,
            ),
        )
        for item in feed.items
    ]
    return JsonFeed(
        title=feed.title,
        home_page_url=feed.home_url,
        feed_url=feed.self_url,
        description=feed.description,
        authors=[JsonFeedAuthor(name="Newsdesk", url=feed.home_url)],
        items=items,
    )


def render_json(feed: DigestFeed) -> bytes:
    return json_feed(feed).model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")


RENDERERS = {"rss": render_rss, "atom": render_atom, "json": render_json}
