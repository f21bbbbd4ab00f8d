"""Subscribing a webhook: the one place that decides which URLs may receive events (the same
address guard as feeds, :mod:`core.urlguard`, under the webhook settings) and makes the
secret. The API (``POST /v1/webhooks``) and the CLI (``newsdesk webhooks add``) both call
:func:`subscribe`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from core.urlguard import Hints, check_url
from serving.settings import ServingSettings
from serving.webhooks import store
from serving.webhooks.schemas import WebhookCreate, WebhookCreated

WEBHOOK_HINTS = Hints(
    private="NEWSDESK_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", loopback="NEWSDESK_WEBHOOK_ALLOW_LOOPBACK"
)


class InvalidWebhookURL(ValueError):
    """A URL the guard refuses as a webhook; the message says why."""


def check_webhook_url(url: str, *, allow_private: bool, allow_loopback: bool) -> None:
    """Raise ``InvalidWebhookURL`` when ``url`` cannot receive events (no DNS lookup; the
    dispatcher checks every resolved address again when it connects)."""
    reason = check_url(
        url,
        allow_private=allow_private,
        allow_loopback=allow_loopback,
        allow_file=False,
        schemes=("http", "https"),
        hints=WEBHOOK_HINTS,
    )
    if reason:
        raise InvalidWebhookURL(reason)


def new_secret() -> str:
    """A random signing secret (256 bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class SubscribePolicy:
    """What subscribing reads from the settings (the API holds it in its ApiConfig)."""

    allow_private: bool = False
    allow_loopback: bool = False
    growth_step: int = 3

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> SubscribePolicy:
        return cls(
            allow_private=settings.webhook_allow_private_addresses,
            allow_loopback=settings.webhook_allow_loopback,
            growth_step=settings.webhook_growth_step,
        )


async def subscribe(
    pool: asyncpg.Pool | asyncpg.Connection, request: WebhookCreate, policy: SubscribePolicy
) -> WebhookCreated:
    """Store a new webhook (a secret generated when the request has none); raises
    ``InvalidWebhookURL`` for a URL the guard refuses."""
    check_webhook_url(
        request.url, allow_private=policy.allow_private, allow_loopback=policy.allow_loopback
    )
    request = request.model_copy(
        update={
            "secret": request.secret or new_secret(),
            "growth_step": request.growth_step or policy.growth_step,
        }
    )
    return await store.create_webhook(pool, request)
