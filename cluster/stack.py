"""The components of the local stack behind ``newsdesk up`` (the machinery that starts them in
order and stops them in reverse is :mod:`cluster.components`); later layers append theirs (e.g.
the Serve application after the poller):

    stack = Stack(settings, default_components(settings) + [MyServeApp()])
    with stack:            # start() ... stop(), also on Ctrl-C or an error
        ...

What runs by default: Ray (a local head in this process via ``ray.init``, which picks free
ports, never Redis's 6379; or the cluster at ``NEWSDESK_RAY_ADDRESS``), PostgreSQL (embedded
unless ``NEWSDESK_DATABASE_URL``), the feeds of ``configs/feeds.yaml``, then the Serve app
with feed ingestion in it (``cluster.serve_app``). The ``FeedPoller`` actor alone is an
optional component (``--only ... --only poller``: ingestion without the model).
Components share what they set up through ``StackContext``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from cluster.components import Component, StackContext
from cluster.settings import Settings
from ingestion.actor import RAY_NAMESPACE
from ingestion.settings import IngestionSettings

log = logging.getLogger(__name__)


class RayComponent:
    """Joins ``ray_address``, or starts a local Ray in this process; reuses one already up."""

    name = "ray"

    def __init__(self, *, include_dashboard: bool = True) -> None:
        self.include_dashboard = include_dashboard
        self.owned = False

    def start(self, ctx: StackContext) -> None:
        import ray

        info = None
        if ray.is_initialized():
            self.owned = False
        elif ctx.settings.ray_address:
            info = ray.init(address=ctx.settings.ray_address, namespace=RAY_NAMESPACE)
            self.owned = True
        else:
            info = ray.init(
                address="local",  # a new local head, never another cluster found on the host
                namespace=RAY_NAMESPACE,
                include_dashboard=self.include_dashboard,
                dashboard_host="127.0.0.1",
            )
            self.owned = True
        ctx.values["ray_gcs_address"] = ray.get_runtime_context().gcs_address
        ctx.values["ray_dashboard_url"] = getattr(info, "dashboard_url", None) or None

    def stop(self, ctx: StackContext) -> None:
        import ray

        if self.owned and ray.is_initialized():
            ray.shutdown()

    def describe(self, ctx: StackContext) -> str:
        import ray

        where = "cluster" if ctx.settings.ray_address else "local head"
        text = f"Ray {ray.__version__} {where}, GCS {ctx.values.get('ray_gcs_address')}"
        dashboard = ctx.values.get("ray_dashboard_url")
        if dashboard:
            text += f", dashboard http://{dashboard}" if "://" not in dashboard else dashboard
        return text


def _mask(dsn: str) -> str:
    """The DSN without its password."""
    return re.sub(r"(://[^:/@]*:)[^@]+@", r"\1***@", dsn)


class DatabaseComponent:
    """PostgreSQL, migrated: the configured one or the embedded server (left running)."""

    name = "database"

    def start(self, ctx: StackContext) -> None:
        from core import db

        async def go() -> str:
            dsn = await db.resolve_database_url(ctx.settings)
            pool = await db.create_pool(ctx.settings, dsn=dsn)
            await pool.close()
            return dsn

        ctx.values["database_embedded"] = not ctx.settings.database_url
        dsn = asyncio.run(go())
        ctx.values["database_url"] = dsn
        # Components after this one (and the actors they start) use this very database.
        ctx.settings = ctx.settings.model_copy(update={"database_url": dsn})

    def stop(self, ctx: StackContext) -> None:
        pass  # the embedded server keeps running for the next start (~2 s saved), by design

    def describe(self, ctx: StackContext) -> str:
        kind = "embedded PostgreSQL" if ctx.values.get("database_embedded") else "PostgreSQL"
        return f"{kind} {_mask(str(ctx.values.get('database_url')))}"


class FeedsComponent:
    """Subscribes to the feeds of ``settings.feeds_file`` not subscribed yet."""

    name = "feeds"

    def start(self, ctx: StackContext) -> None:
        from core import db
        from ingestion.feedlist import FeedListError, add_feeds, load_feeds_yaml

        path = ctx.settings.feeds_file
        try:
            specs = load_feeds_yaml(path)
        except FeedListError as exc:
            log.warning("feeds file not loaded: %s", exc)
            ctx.values["feeds"] = f"none loaded ({exc})"
            return

        async def go():  # type: ignore[no-untyped-def]
            pool = await db.create_pool(ctx.settings)
            try:
                return await add_feeds(pool, specs, ctx.settings)
            finally:
                await pool.close()

        report = asyncio.run(go())
        refused = f", {len(report.refused)} refused" if report.refused else ""
        ctx.values["feeds"] = (
            f"{len(specs)} feeds in {path.name}: {len(report.added)} new, "
            f"{len(report.existing)} already subscribed{refused}"
        )

    def stop(self, ctx: StackContext) -> None:
        pass

    def describe(self, ctx: StackContext) -> str:
        return str(ctx.values.get("feeds"))


class PollerComponent:
    """The ``FeedPoller`` actor (named; detached on a Ray cluster), polling from the start."""

    name = "poller"

    def __init__(self, *, ready_timeout_s: float = 120.0) -> None:
        self.ready_timeout_s = ready_timeout_s
        self.handle: Any = None

    def start(self, ctx: StackContext) -> None:
        import ray

        from ingestion.actor import FeedPoller

        s = ctx.settings
        options: dict[str, Any] = {
            "name": s.poller_actor_name,
            "namespace": RAY_NAMESPACE,
            "get_if_exists": True,
        }
        if s.ray_address:
            options["lifetime"] = "detached"  # survives a lost driver on a real cluster
        # the actor receives its own section only (core + ingestion fields)
        self.handle = FeedPoller.options(**options).remote(s.section(IngestionSettings))
        status = ray.get(self.handle.ready.remote(), timeout=self.ready_timeout_s)
        ray.get(self.handle.start.remote(), timeout=self.ready_timeout_s)
        ctx.values["poller"] = self.handle
        ctx.values["poller_status"] = status

    def stop(self, ctx: StackContext) -> None:
        import ray

        if self.handle is None:
            return
        try:
            ray.get(self.handle.stop.remote(), timeout=60)
        except Exception:
            log.exception("poller did not stop cleanly")
        ray.kill(self.handle)
        self.handle = None
        ctx.values.pop("poller", None)

    def describe(self, ctx: StackContext) -> str:
        s = ctx.settings
        feeds = (ctx.values.get("poller_status") or {}).get("feeds") or {}
        counts = ", ".join(f"{n} {state}" for state, n in sorted(feeds.items())) or "no feeds"
        return (
            f"FeedPoller actor {s.poller_actor_name!r} (namespace {RAY_NAMESPACE}): {counts}; "
            f"{s.fetch_concurrency} fetches at once, {s.fetch_per_host} per host"
        )


def default_components(settings: Settings, *, dashboard: bool = True) -> list[Component]:
    """What ``make run`` starts. Feed ingestion is part of the Serve app (``cluster.app``, the
    assembly ``serve deploy`` runs on a cluster), not a component of its own."""
    from cluster.sample_data import SampleFeedsComponent
    from cluster.serve_app import ServeAppComponent

    return [
        RayComponent(include_dashboard=dashboard),
        DatabaseComponent(),
        FeedsComponent(),
        SampleFeedsComponent(),  # NEWSDESK_SAMPLE_FEEDS: real ABC text, offline (product)
        ServeAppComponent(),  # the whole app: serving, the loop, stories and feed ingestion
    ]


def optional_components() -> list[Component]:
    """Components ``newsdesk up --only`` may name beyond the default ones: ``poller`` (the
    FeedPoller actor alone: ingestion without the model, never beside ``serve``, which
    already ingests)."""
    return [PollerComponent()]
