"""The API's own settings (limits, key, time limit), taken from :class:`ServingSettings` once."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import SecretStr

from serving.settings import ServingSettings
from serving.webhooks.subscriptions import SubscribePolicy


@dataclass(frozen=True)
class ApiConfig:
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_articles: int = 64
    max_list_limit: int = 200
    rank_half_life_h: float = 24.0
    summarizer_timeout_s: float = 900.0
    # the digest feeds: absolute links (None: the request's base URL), caching, and the
    # ranking knobs their ETag depends on besides the data
    public_url: str | None = None
    feeds_max_age_s: int = 300
    story_source_boost: float = 0.10
    story_source_boost_cap: float = 1.5
    # Behind Serve's HTTP proxy: it gives each request an X-Request-ID (or passes the client's
    # on) and echoes it in the response itself; the app uses that id and adds no header.
    behind_serve_proxy: bool = False
    webhooks: SubscribePolicy = field(default_factory=SubscribePolicy)
    # The settings this config was made from: a route group that needs another section's
    # fields narrows them (the feed routes: ingestion's rules for subscribing).
    settings: ServingSettings | None = None

    @classmethod
    def from_settings(
        cls, settings: ServingSettings, *, behind_serve_proxy: bool = False
    ) -> ApiConfig:
        key = settings.api_key
        return cls(
            api_key=key.get_secret_value() if isinstance(key, SecretStr) else key,
            max_body_bytes=settings.api_max_body_bytes,
            max_batch_articles=settings.api_max_batch_articles,
            max_list_limit=settings.api_max_list_limit,
            rank_half_life_h=settings.api_rank_half_life_h,
            summarizer_timeout_s=settings.summarizer_timeout_s,
            public_url=settings.public_url,
            feeds_max_age_s=settings.feeds_max_age_s,
            story_source_boost=settings.story_source_boost,
            story_source_boost_cap=settings.story_source_boost_cap,
            behind_serve_proxy=behind_serve_proxy,
            webhooks=SubscribePolicy.from_settings(settings),
            settings=settings,
        )
