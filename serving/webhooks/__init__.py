"""Webhook alerts: a subscription is a URL with a filter (minimum importance, topics,
sources) and a growth threshold; Newsdesk POSTs a signed JSON event when a story first
matches it (``story.matched``) and each time the story has grown by the threshold since the
last event (``story.grew``).

- :mod:`.schemas`: the API's request/response bodies and the event JSON;
- :mod:`.subscriptions`: which URLs may be subscribed (the feeds' address guard), secrets;
- :mod:`.store`: all SQL (migration 006: webhooks, the outbox, the delivery log);
- :mod:`.matcher`: stories -> events, inside the transaction that changed the story;
- :mod:`.signing`: the ``X-Newsdesk-Signature`` header and ``verify_signature``;
- :mod:`.dispatcher`: claims due events and delivers them, with retries and backoff.

See docs/webhooks.md.
"""
