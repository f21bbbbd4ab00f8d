"""The Serve application as a component of the local stack (``newsdesk up``).

Starts Serve's HTTP proxy on ``serve_host:serve_port`` in the stack's Ray and runs
``cluster.app``, the assembly ``serve deploy`` runs on a cluster (Ingress -> CacheLookup ->
Summarizer, the summarization loop when ``summarize_loop_enabled`` and beside it the story
assigner when ``stories_enabled``, and feed ingestion) on the stack's database; stops it
before Ray goes down.
"""

from __future__ import annotations

import logging
import os

from cluster.components import StackContext

log = logging.getLogger(__name__)

APP_NAME = "newsdesk"


class ServeAppComponent:
    name = "serve"

    def __init__(self) -> None:
        self.url: str | None = None

    def start(self, ctx: StackContext) -> None:
        from ray import serve

        from cluster.app import NewsdeskArgs, compose

        s = ctx.settings
        serve.start(http_options={"host": s.serve_host, "port": s.serve_port})
        # the stack's settings are the app's (profile, loop, database, feeds...); args only
        # add that one replica scheduled as 1 CPU uses every core of this machine for torch
        args = NewsdeskArgs(engine_threads=s.engine_threads or os.cpu_count() or 1)
        serve.run(compose(args, s), name=APP_NAME, route_prefix="/")
        self.url = f"http://{s.serve_host}:{s.serve_port}"
        ctx.values["serve_url"] = self.url

    def stop(self, ctx: StackContext) -> None:
        from ray import serve

        try:
            serve.delete(APP_NAME)
        finally:
            serve.shutdown()
        ctx.values.pop("serve_url", None)

    def describe(self, ctx: StackContext) -> str:
        s = ctx.settings
        loop = "on" if s.summarize_loop_enabled else "off"
        return (
            f"Serve app {APP_NAME!r} ({s.model_profile}): digest page {self.url}/ ; "
            f"API POST {self.url}/v1/summarize, GET {self.url}/v1/stories, "
            f"GET {self.url}/v1/articles, {self.url}/readyz, "
            f"{self.url}/v1/stats, {self.url}/openapi.json; summarization loop {loop}; "
            "feed ingestion (FeedIngestion, one poller per database)"
        )
