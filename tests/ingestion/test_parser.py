"""Parsing fetched bytes and normalizing entries into Articles: formats, bad documents,
encodings, dates, links, text cleaning, dedup keys, caps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.article import content_hash
from core.html_text import html_to_text
from ingestion.normalizer import (
    REJECT_NO_LINK_NO_TEXT,
    canonical_url,
    dedup_key,
    normalize_entries,
)
from ingestion.parser import FeedParseError, parse_feed
from tests.support.feedserver import Item, atom_document, items, rss_document

FETCHED = datetime(2025, 6, 11, 8, 0, tzinfo=UTC)


def normalize(body: bytes, headers: dict[str, str] | None = None, **kw):  # type: ignore[no-untyped-def]
    parsed = parse_feed(body, headers or {}, base_url="https://news.example.com/feed.xml")
    args = {
        "feed_id": 1,
        "source": None,
        "base_url": "https://news.example.com/feed.xml",
        "fetched_at": FETCHED,
        "max_chars": 100_000,
    }
    args.update(kw)
    return parsed, normalize_entries(parsed, **args)  # type: ignore[arg-type]


# --- formats ----------------------------------------------------------------------------------


def test_rss20_with_content_encoded_prefers_it_over_the_summary():
    body = rss_document(
        [
            Item(
                title="Budget passes",
                link="https://news.example.com/a",
                guid="id-1",
                description="<p>Short summary.</p>",
                content="<p>Full <b>story</b> text.</p><p>Second paragraph.</p>",
                author="jane@example.com (Jane Roe)",
            )
        ]
    )
    parsed, out = normalize(body)
    assert parsed.version == "rss20" and parsed.title == "Example News"
    [entry] = out.entries
    a = entry.article
    assert a.title == "Budget passes"
    assert a.text == "Full story text.\n\nSecond paragraph."
    assert a.url == "https://news.example.com/a" and a.guid == "id-1"
    assert a.author == "jane@example.com (Jane Roe)"
    assert a.published == datetime(2025, 6, 10, 4, 0, tzinfo=UTC)
    assert a.language == "en" and a.source == "Example News" and a.feed_id == 1
    assert entry.dedup_key == "id-1"


def test_atom():
    parsed, out = normalize(atom_document(items(2)))
    assert parsed.version == "atom10"
    assert [e.article.title for e in out.entries] == [
        "Story 0: something happened",
        "Story 1: something happened",
    ]
    assert out.entries[0].article.text == "Summary of story 0. It has bold words."
    assert out.entries[0].article.language == "en"  # from xml:lang
    assert out.entries[0].article.published == datetime(2025, 6, 10, 4, 0, tzinfo=UTC)


def test_rss10_rdf():
    body = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
 xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel rdf:about="https://dw.example/"><title>DW</title><link>https://dw.example/</link>
<description>d</description></channel>
<item rdf:about="https://dw.example/a"><title>Item A</title><link>https://dw.example/a</link>
<description>Text of A.</description><dc:date>2025-06-10T10:00:00+02:00</dc:date>
<dc:language>de</dc:language></item>
</rdf:RDF>"""
    parsed, out = normalize(body)
    assert parsed.version == "rss10"
    [e] = out.entries
    assert e.article.title == "Item A" and e.article.text == "Text of A."
    assert e.article.published == datetime(2025, 6, 10, 8, 0, tzinfo=UTC)  # UTC
    assert e.dedup_key == "https://dw.example/a"


def test_rss091():
    body = b"""<?xml version="1.0"?><rss version="0.91"><channel><title>Old</title>
<link>http://old.example/</link><description>d</description><language>fr</language>
<item><title>Ancien</title><link>http://old.example/1</link><description>Texte.</description></item>
</channel></rss>"""
    parsed, out = normalize(body)
    assert parsed.version.startswith("rss09")
    [e] = out.entries
    assert e.article.language == "fr" and e.article.text == "Texte."
    assert e.article.published == FETCHED  # no date: the fetch time


# --- bad documents ----------------------------------------------------------------------------


def test_bozo_feed_keeps_its_good_entries():
    good = rss_document(items(3))
    broken = good.replace(b"<item>", b"<item><bad&>", 1)  # not well-formed XML
    parsed, out = normalize(broken)
    assert parsed.problem and "not well-formed" in parsed.problem
    assert len(out.entries) == 3


def test_truncated_feed_keeps_what_came_before_the_cut():
    good = rss_document(items(4))
    cut = good[: good.index(b"Story 3")]
    parsed, out = normalize(cut)
    assert parsed.problem
    titles = [e.article.title for e in out.entries]
    assert titles[:3] == [f"Story {i}: something happened" for i in range(3)]


def test_html_page_instead_of_a_feed_names_the_advertised_feed():
    page = (
        b"<!DOCTYPE html><html><head><title>News</title>"
        b'<link rel="alternate" type="application/rss+xml" href="/rss.xml"></head>'
        b"<body><p>Hello</p></body></html>"
    )
    with pytest.raises(FeedParseError) as err:
        parse_feed(page, {"Content-Type": "text/html"}, base_url="https://site.example/news")
    assert "HTML page" in err.value.reason
    assert "https://site.example/rss.xml" in err.value.reason


@pytest.mark.parametrize("body", [b"", b"   \n\t  "])
def test_empty_document(body):
    with pytest.raises(FeedParseError, match="empty document"):
        parse_feed(body)


@pytest.mark.parametrize("body", [b"\x00\x01\x02garbage\xff\xfe", b"just some words", b"{}"])
def test_garbage_is_not_a_feed(body):
    with pytest.raises(FeedParseError, match="not an RSS/Atom feed"):
        parse_feed(body, {"Content-Type": "application/octet-stream"})


def test_empty_feed_is_a_feed_with_no_entries():
    parsed, out = normalize(rss_document([]))
    assert parsed.version == "rss20" and parsed.entries == [] and out.entries == []


def test_a_path_in_the_body_is_not_opened():
    # feedparser opens a file when handed a path; the parser hands it bytes in a stream.
    with pytest.raises(FeedParseError):
        parse_feed(b"/etc/hostname")


# --- encodings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "declared", "content_type"),
    [
        ("latin-1", "utf-8", "application/rss+xml"),  # declared utf-8, bytes latin-1
        ("latin-1", None, "application/xml"),  # no declaration, bytes latin-1
        ("utf-8", "iso-8859-1", "application/rss+xml"),  # declared latin-1, bytes utf-8
        ("utf-8", None, "text/xml; charset=iso-8859-1"),  # header says latin-1
        ("latin-1", "iso-8859-1", "application/rss+xml"),  # correct declaration
        ("utf-16", "utf-16", "application/rss+xml"),
    ],
)
def test_wrong_or_missing_encoding_still_reads_the_text(encoding, declared, content_type):
    body = rss_document(
        [Item(title="Café naïve déjà vu", description="Über große Straßen")],
        encoding=encoding,
        declare_encoding=declared,
    )
    _, out = normalize(body, {"Content-Type": content_type})
    [e] = out.entries
    assert e.article.title == "Café naïve déjà vu"
    assert e.article.text == "Über große Straßen"


# --- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pub_date", "expected"),
    [
        ("Tue, 10 Jun 2025 06:00:00 +0200", datetime(2025, 6, 10, 4, 0, tzinfo=UTC)),
        ("2025-06-10T04:00:00Z", datetime(2025, 6, 10, 4, 0, tzinfo=UTC)),
        ("not a date at all", FETCHED),
        ("Tue, 45 Foo 2025 99:99:99 GMT", FETCHED),
        ("Thu, 01 Jan 1970 00:00:00 GMT", FETCHED),  # epoch placeholder
        ("Fri, 01 Jan 2100 00:00:00 GMT", FETCHED),  # far future
        ("Wed, 11 Jun 2025 09:00:00 GMT", FETCHED),  # an hour ahead of the fetch
        (None, FETCHED),
    ],
)
def test_dates_are_utc_and_absurd_ones_replaced(pub_date, expected):
    _, out = normalize(rss_document([Item(pub_date=pub_date)]))
    [e] = out.entries
    assert e.article.published == expected
    assert e.article.published.tzinfo is not None
    assert out.dates_replaced == (1 if pub_date and expected == FETCHED else 0)


# --- links, text, rejects, keys ---------------------------------------------------------------


def test_entries_without_link():
    body = rss_document(
        [
            Item(title="Text only", link=None, guid=None, description="<p>Body text.</p>"),
            Item(title="Nothing", link=None, guid=None, description=None),
            Item(
                title="Empty markup", link=None, guid=None, description="<p> </p><script>x</script>"
            ),
        ]
    )
    _, out = normalize(body)
    [e] = out.entries
    assert e.article.url is None and e.article.text == "Body text."
    assert e.dedup_key == "sha256:" + content_hash("Text only", "Body text.")
    assert out.rejected == {REJECT_NO_LINK_NO_TEXT: 2}


def test_link_only_entry_is_kept():
    _, out = normalize(rss_document([Item(title="", description=None, guid=None)]))
    [e] = out.entries
    assert e.article.url == "https://news.example.com/story" and e.article.text == ""


def test_relative_links_are_resolved_and_tracking_dropped():
    _, out = normalize(
        rss_document([Item(link="/world/1?utm_source=rss&id=7#top", guid=None)]),
    )
    assert out.entries[0].article.url == "https://news.example.com/world/1?id=7"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("HTTPS://News.Example.COM:443/a", "https://news.example.com/a"),
        ("http://x.example:80", "http://x.example/"),
        ("javascript:alert(1)", None),
        ("mailto:a@b", None),
        ("", None),
    ],
)
def test_canonical_url(link, expected):
    assert canonical_url(link) == expected


def test_dedup_key_precedence():
    assert dedup_key("g", "https://u", "t", "x") == "g"
    assert dedup_key(None, "https://u", "t", "x") == "https://u"
    assert dedup_key(None, None, "t", "x") == "sha256:" + content_hash("t", "x")
    long = "g" * 5000
    assert dedup_key(long, None, "", "").startswith("sha256:")


def test_repeated_key_in_one_document_is_kept_once():
    _, out = normalize(rss_document([Item(guid="same"), Item(guid="same", title="Other")]))
    assert len(out.entries) == 1 and out.duplicates_in_feed == 1


def test_overlong_text_is_capped_on_a_boundary():
    words = " ".join(f"word{i}" for i in range(3000))  # ~26,000 chars
    _, out = normalize(rss_document([Item(description=words)]), max_chars=5000)
    text = out.entries[0].article.text
    assert 4500 <= len(text) <= 5000 and text.split()[-1].startswith("word")
    assert out.truncated == 1


def test_html_title_is_plain_text():
    body = rss_document([Item(title="Markets &amp; <b>rates</b>")])
    _, out = normalize(body)
    assert out.entries[0].article.title == "Markets & rates"


def test_html_to_text_keeps_paragraphs_and_drops_scripts():
    html = (
        "<div><h2>Title</h2><p>One <a href='#'>link</a> here.</p>"
        "<script>var x = 'hidden';</script><style>p { color: red }</style>"
        "<p>Two<br>lines</p><ul><li>a</li><li>b</li></ul>"
        "<p>Entities: &amp; &lt;tag&gt; &eacute;&nbsp;x</p><noscript>no</noscript></div>"
    )
    assert html_to_text(html) == (
        "Title\n\nOne link here.\n\nTwo\nlines\n\na\n\nb\n\nEntities: & <tag> é x"
    )
    assert html_to_text("plain  text\n\nsecond") == "plain text\n\nsecond"
    assert html_to_text("<p>unclosed <b>bold<p>next") == "unclosed bold\n\nnext"
    assert html_to_text("") == ""
