"""Lists of feeds to subscribe to: ``configs/feeds.yaml`` and OPML files, as ``FeedSpec``s,
and subscribing to each through ``subscriptions.subscribe`` (existing feeds are left as they
are)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingestion import store
from ingestion.settings import IngestionSettings
from ingestion.subscriptions import InvalidFeedURL, subscribe


class FeedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str = Field(min_length=1, max_length=4096)
    title: str | None = Field(default=None, max_length=1000)
    interval_s: int | None = Field(default=None, ge=10)
    category: str | None = Field(default=None, max_length=1000)
    tags: list[str] = Field(default_factory=list)

    @property
    def folder(self) -> str | None:
        """The category stored with the feed: given, else its OPML folders joined by "/"."""
        return self.category or "/".join(self.tags) or None


class FeedsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, int] = Field(default_factory=dict)
    feeds: list[FeedSpec]


class FeedListError(ValueError):
    pass


def load_feeds_yaml(path: Path) -> list[FeedSpec]:
    """The feeds of a YAML file ``{defaults: {interval_s: N}, feeds: [{url, title, ...}]}``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FeedListError(f"cannot read {path}: {exc}") from exc
    return parse_feeds_yaml(data, str(path))


def parse_feeds_yaml(data: bytes, name: str = "feeds YAML") -> list[FeedSpec]:
    """The feeds of a YAML document (``load_feeds_yaml``'s format); ``name`` labels errors."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise FeedListError(f"cannot read {name}: {exc}") from exc
    try:
        parsed = FeedsFile.model_validate(doc or {"feeds": []})
    except ValidationError as exc:
        raise FeedListError(f"{name}: {exc}") from exc
    interval = parsed.defaults.get("interval_s")
    return [
        spec
        if spec.interval_s or not interval
        else spec.model_copy(update={"interval_s": interval})
        for spec in parsed.feeds
    ]


@dataclass
class AddReport:
    added: list[store.Feed] = field(default_factory=list)
    existing: list[store.Feed] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)


async def add_feeds(
    db: store.Db, specs: Iterable[FeedSpec], settings: IngestionSettings
) -> AddReport:
    """Add each spec not yet subscribed; refuse (with the reason) URLs the guard refuses."""
    report = AddReport()
    for spec in specs:
        try:
            feed, created = await subscribe(
                db,
                spec.url,
                settings,
                title=spec.title,
                interval_s=spec.interval_s,
                category=spec.folder,
            )
        except InvalidFeedURL as exc:
            report.refused.append((spec.url, str(exc)))
            continue
        (report.added if created else report.existing).append(feed)
    return report
