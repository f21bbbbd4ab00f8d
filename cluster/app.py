"""The whole Newsdesk as one Serve application: ``cluster.app:build_app``.

``serve deploy <config>`` with this import path brings up everything on an existing Ray
cluster: the serving app of :mod:`serving.deployments.builder` (Ingress, CacheLookup, Summarizer
replicas, the summarization loop, the story assigner) plus feed ingestion (the ``FeedIngestion``
deployment of :mod:`ingestion.deployment`: the poller, one per database through a PostgreSQL
advisory lock). ``newsdesk up`` runs this same assembly (``cluster.serve_app``).

It lives here, in the layer that puts the parts together, because serving and ingestion may
not import each other (tests/test_import_graph.py): :func:`serving.deployments.builder.compose`
takes extra deployments as ``services`` and binds them to the Ingress, which is how Serve deploys
them with the app and how ``/v1/stats`` shows their status (``ingestion``).

Placement comes from the config's ``args`` (the per-part options style of Ray Serve LLM's
``LLMConfig.deployment_config``): ``light_resources`` for every light part, feed ingestion
included (``{newsdesk_cpu: 0.25}``: the CPU workers), ``summarizer.resources`` /
``summarizer.num_gpus`` for the model replicas (the accelerator workers). The config's
``deployments:`` section still overrides any deployment's options, as usual in Serve.

No ``from __future__ import annotations`` here: Serve converts the args only when the
builder's parameter annotation is the class itself, not a string.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from ingestion.deployment import FeedIngestionDeployment
from ingestion.settings import IngestionSettings
from serving.deployments.builder import AppArgs, light_actor_options
from serving.deployments.builder import compose as compose_serving
from serving.settings import ServingSettings


class IngestionOptions(BaseModel):
    """Feed ingestion in the app: one poller works per database whatever ``num_replicas``
    says (more replicas are hot standbys)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Poll feeds in this app.")
    num_replicas: int = Field(default=1, ge=1, description="Replicas; one polls, others wait.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="IngestionSettings fields (names without NEWSDESK_), e.g. allow_loopback.",
    )


class NewsdeskArgs(AppArgs):
    """:class:`serving.deployments.builder.AppArgs` plus feed ingestion."""

    ingestion: IngestionOptions = Field(default_factory=IngestionOptions)

    def ingestion_settings(self, base: IngestionSettings | None = None) -> IngestionSettings:
        """The poller's settings: ``base`` (default: the environment's) with the database
        override and ``ingestion.settings`` laid on."""
        overrides = dict(self.ingestion.settings)
        if self.database_url is not None:
            overrides["database_url"] = self.database_url
        if self.state_dir is not None:
            overrides["state_dir"] = self.state_dir
        checked = IngestionSettings(**overrides)
        if base is None:
            return checked
        section = base.section(IngestionSettings)
        return section.model_copy(update={name: getattr(checked, name) for name in overrides})


def build_app(args: NewsdeskArgs) -> Application:
    """The application builder named in the Serve configs (exactly one parameter)."""
    if isinstance(args, dict):  # called directly with a plain dict
        args = NewsdeskArgs.model_validate(args)
    return compose(args)


def compose(args: NewsdeskArgs, settings: ServingSettings | None = None) -> Application:
    """The serving app with feed ingestion bound in (``settings``: a composite
    ``cluster.settings.Settings`` from ``newsdesk up``; default: the environment's)."""
    services: dict[str, Any] = {}
    if args.ingestion.enabled:
        base = settings if isinstance(settings, IngestionSettings) else None
        services["ingestion"] = FeedIngestionDeployment.options(
            num_replicas=args.ingestion.num_replicas,
            ray_actor_options=light_actor_options(args),
            # a standby waits on the lock inside __init__'s task, never in a request
            health_check_timeout_s=30,
            graceful_shutdown_timeout_s=45,
        ).bind(args.ingestion_settings(base))
    return compose_serving(args, settings, services)
