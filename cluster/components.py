"""The stack machinery behind ``newsdesk up``: components started in order, stopped in reverse.

A component is anything with ``name``, ``start(ctx)``, ``stop(ctx)`` and ``describe(ctx)``;
components share what they set up through :class:`StackContext`. The components themselves
live beside what they start (``cluster.stack``: Ray, PostgreSQL, feeds, the poller;
``cluster.sample_data``; ``cluster.serve_app``), so this module imports none of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class StackContext:
    settings: Settings
    # Handles and facts one component leaves for the next (database_url, poller, ...).
    values: dict[str, Any] = field(default_factory=dict)


class Component(Protocol):
    name: str

    def start(self, ctx: StackContext) -> None: ...

    def stop(self, ctx: StackContext) -> None: ...

    def describe(self, ctx: StackContext) -> str: ...


class Stack:
    def __init__(self, settings: Settings, components: list[Component]) -> None:
        self.ctx = StackContext(settings)
        self.components = list(components)
        self.started: list[Component] = []

    def start(self) -> None:
        """Start each component in order; on a failure, stop those started, then raise."""
        for component in self.components:
            log.info("starting %s", component.name)
            try:
                component.start(self.ctx)
            except BaseException:
                self.stop()
                raise
            self.started.append(component)

    def stop(self) -> None:
        """Stop the started components in reverse order; one failing does not stop the rest."""
        while self.started:
            component = self.started.pop()
            log.info("stopping %s", component.name)
            try:
                component.stop(self.ctx)
            except Exception:
                log.exception("stopping %s failed", component.name)

    def describe(self) -> list[tuple[str, str]]:
        return [(c.name, c.describe(self.ctx)) for c in self.started]

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
