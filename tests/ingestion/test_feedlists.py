"""Feed lists: OPML import (nested folders, unsafe XML refused) and configs/feeds.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.settings import Settings
from core.urlguard import check_url
from ingestion import store
from ingestion.feedlist import FeedListError, FeedSpec, add_feeds, load_feeds_yaml
from ingestion.opml import parse_opml

REPO = Path(__file__).resolve().parents[2]

OPML = b"""<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>My subscriptions</title></head>
  <body>
    <outline text="World">
      <outline type="rss" text="BBC World" title="BBC News - World"
               xmlUrl="https://feeds.bbci.co.uk/news/world/rss.xml" htmlUrl="https://bbc.co.uk"/>
      <outline text="Europe">
        <outline type="rss" text="DW" xmlUrl="https://rss.dw.com/rdf/rss-en-all"/>
      </outline>
    </outline>
    <outline type="rss" text="NPR" xmlURL="https://feeds.npr.org/1001/rss.xml"/>
    <outline type="rss" text="BBC again" xmlUrl="https://feeds.bbci.co.uk/news/world/rss.xml"/>
    <outline text="A folder with nothing"/>
  </body>
</opml>"""


def test_opml_nested_folders_become_feeds_with_tags():
    specs = parse_opml(OPML)
    assert [(s.url, s.title, s.tags) for s in specs] == [
        ("https://feeds.bbci.co.uk/news/world/rss.xml", "BBC News - World", ["World"]),
        ("https://rss.dw.com/rdf/rss-en-all", "DW", ["World", "Europe"]),
        ("https://feeds.npr.org/1001/rss.xml", "NPR", []),
    ]


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<opml><body><outline text="&xxe;" xmlUrl="https://a.example/"/></body></opml>',
            "unsafe OPML",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b'<opml><body><outline text="&lol2;" xmlUrl="https://a.example/"/></body></opml>',
            "unsafe OPML",
        ),
        (b"<rss><channel/></rss>", "not an OPML document"),
        (b"<opml><head/></opml>", "without a <body>"),
        (b"<opml><body><outline", "not valid XML"),
    ],
)
def test_bad_or_unsafe_opml_is_refused_with_a_reason(doc, words):
    with pytest.raises(FeedListError, match=words):
        parse_opml(doc)


def test_the_default_feeds_file_is_a_sensible_list(tmp_path):
    specs = load_feeds_yaml(REPO / "configs" / "feeds.yaml")
    assert 15 <= len(specs) <= 30
    urls = [s.url for s in specs]
    assert len(set(urls)) == len(urls)
    default = Settings(state_dir=tmp_path)
    for spec in specs:
        assert spec.url.startswith("https://") and spec.title
        assert spec.interval_s and spec.interval_s >= 600  # defaults applied
        reason = check_url(
            spec.url,
            allow_private=default.allow_private_addresses,
            allow_loopback=default.allow_loopback,
            allow_file=default.allow_file_urls,
        )
        assert reason is None, (spec.url, reason)
    assert default.feeds_file.resolve() == (REPO / "configs" / "feeds.yaml").resolve()


def test_bad_feeds_yaml_says_why(tmp_path):
    path = tmp_path / "feeds.yaml"
    path.write_text("feeds:\n  - title: no url\n")
    with pytest.raises(FeedListError, match="url"):
        load_feeds_yaml(path)
    path.write_text("feeds: [unclosed\n")
    with pytest.raises(FeedListError, match="cannot read"):
        load_feeds_yaml(path)


async def test_add_feeds_skips_existing_and_refuses_private(settings, pool):
    s = settings.model_copy(update={"allow_loopback": False})
    specs = [
        FeedSpec(url="https://a.example/rss", title="A", interval_s=1200),
        FeedSpec(url="http://192.168.1.1/rss"),
        FeedSpec(url="https://a.example/rss", title="A again"),
    ]
    report = await add_feeds(pool, specs, s)
    assert [f.url for f in report.added] == ["https://a.example/rss"]
    assert [f.url for f in report.existing] == ["https://a.example/rss"]
    assert report.refused[0][0] == "http://192.168.1.1/rss"
    assert "private" in report.refused[0][1]
    [feed] = await store.list_feeds(pool)
    assert feed.interval_s == 1200 and feed.title == "A"
