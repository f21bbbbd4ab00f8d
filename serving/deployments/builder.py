"""The Ray Serve application: ``serving.deployments.builder:build_app`` (a typed application
builder).

::

    HTTP ──► Ingress ──► CacheLookup ──► Summarizer × N  (@serve.batch → engine)
               │            ▲
               │            └── SummarizationLoop (stored articles without a summary)
               │                  └╌╌ StoryAssigner (stories; the loop reports its status)
               │                        └╌╌ WebhookDispatcher (alerts from the outbox)
               └── PostgreSQL (article reads), /readyz, /v1/stats

``serve deploy serve_config.yaml`` (or ``serve run``) calls :func:`build_app` with the
config's ``args``, validated into :class:`AppArgs`. Deployment options given in the config's
``deployments:`` section (replicas, ``user_config``, ``ray_actor_options``...) override the
ones set here, as usual in Serve; the Summarizer's ``user_config`` (batch size, batch wait,
adapter) is the one meant to be changed live.

Placement comes from the args: ``light_resources`` on every light deployment (and on what a
caller adds through ``compose(..., services=...)``: ``cluster.app`` adds feed ingestion and
is the import path the configs deploy), ``summarizer.num_gpus`` / ``summarizer.resources`` on
the model replicas.

No ``from __future__ import annotations`` here: Serve converts the args only when the
builder's parameter annotation is the class itself, not a string.
"""

import socket
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from ray.serve import Application

from serving.deployments.cache_lookup import CacheLookupDeployment
from serving.deployments.ingress import IngressDeployment
from serving.deployments.loop import SummarizationLoopDeployment
from serving.deployments.stories import StoryAssignerDeployment
from serving.deployments.summarizer import SummarizerConfig, SummarizerDeployment
from serving.deployments.webhooks import WebhookDispatcherDeployment
from serving.model.profiles import ModelProfile, load_profile
from serving.settings import ServingSettings

# Ray Serve's high-throughput mode (Ray >= 2.56), set in the environment of `ray start` (or
# before `ray.init`): HAProxy takes the HTTP port and forwards to the Ingress replicas' own
# HTTP servers (no Python proxy hop), replicas talk over gRPC. Measured here on 2 cores for a
# cache hit: ~6x the requests/s of the default proxy (README, Benchmarks).
FAST_PATH_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def fast_path_env(run_dir: Path | None = None) -> dict[str, str]:
    """FAST_PATH_ENV plus HAProxy files and ports of their own for one Ray cluster.

    Ray's defaults are machine-wide (``/tmp/haproxy-serve/haproxy.cfg``, its admin socket and
    server-state file; stats port 8404, metrics port 9101, fallback proxy port 8500): a second
    cluster on the same machine would overwrite the first one's HAProxy config. ``run_dir``
    must be short: Ray adds a 56-character node id below it and HAProxy refuses socket paths
    over 97 characters; by default a new ``/tmp/ndhp-*`` folder.
    """
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="ndhp-", dir="/tmp"))
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(str(run_dir)) > 28:
        raise ValueError(f"{run_dir}: too long for HAProxy's socket path (Ray adds 56 chars)")
    return {
        **FAST_PATH_ENV,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(run_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(run_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(run_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(run_dir / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Light deployments await I/O and handles; they take no CPU from the scheduler's budget so
# that a 2-CPU node fits them beside the Summarizer.
LIGHT_ACTOR_OPTIONS = {"num_cpus": 0}
LIGHT_MAX_ONGOING = 1_000


class SummarizerOptions(BaseModel):
    """Replicas and resources of the Summarizer (the model replicas)."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | Literal["auto"] | None = Field(
        default=1, description="Fixed replica count; null or 'auto' with autoscaling_config."
    )
    autoscaling_config: dict[str, Any] | None = Field(
        default=None,
        description="Serve autoscaling (min_replicas, max_replicas, target_ongoing_requests...).",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Per replica; default twice max_batch_size (never below it: @serve.batch "
        "batches cannot exceed it).",
    )
    max_queued_requests: int = Field(
        default=-1,
        description="Requests waiting for a replica beyond which callers get an "
        "error reply (-1: no limit).",
    )
    num_cpus: float | None = Field(
        default=None,
        ge=0,
        description="Per replica (scheduling); default 1. Threads: engine_threads.",
    )
    num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="Per replica; default from the profile: its tensor-parallel size on CUDA, "
        "else 0.",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica: what pins replicas to the accelerator "
        "nodes where GPUs are not the marker (e.g. {newsdesk_accel: 1}, a stand-in).",
    )
    user_config: SummarizerConfig = Field(default_factory=SummarizerConfig)

    @model_validator(mode="after")
    def _batch_fits(self) -> "SummarizerOptions":
        if (
            self.max_ongoing_requests is not None
            and self.max_ongoing_requests < self.user_config.max_batch_size
        ):
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size "
                f"({self.user_config.max_batch_size}): batches could never fill"
            )
        return self


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args`` of an application in a Serve config).

    One direction only: AppArgs carries what the builder needs beyond :class:`ServingSettings` (the
    deployments' shape) plus overrides of settings; :func:`compose` applies them to a base
    ServingSettings and nothing goes back. ``profile`` and ``summarize_loop`` left null, and every
    setting not overridden, come from the base: the environment of the process that builds
    the app (for ``serve deploy``: the Ray cluster's), or the ServingSettings a caller passes
    (``newsdesk up``). ``database_url`` ... ``engine_threads`` override the matching
    ``NEWSDESK_*`` setting; any other setting can be given under ``settings``.
    """

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(
        default=None,
        description="Model profile name (configs/models) or YAML path; null: "
        "NEWSDESK_MODEL_PROFILE (default cpu-small).",
    )
    summarizer: SummarizerOptions = Field(default_factory=SummarizerOptions)
    cache_lookup_replicas: int = Field(default=1, ge=1)
    light_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica of a light deployment (Ingress, "
        "CacheLookup, the loop, the story assigner, and whatever a caller adds) asks for: "
        "what places them on the CPU workers (e.g. {newsdesk_cpu: 0.25}); empty: anywhere.",
    )
    ingress_replicas: int = Field(default=1, ge=1)
    summarize_loop: bool | None = Field(
        default=None,
        description="Run the summarization loop; null: NEWSDESK_SUMMARIZE_LOOP_ENABLED.",
    )
    database_url: str | None = None
    redis_url: str | None = None
    api_key: SecretStr | None = None
    state_dir: str | None = None
    cache_max_entries: int | None = Field(default=None, ge=1)
    cache_ttl_s: int | None = Field(default=None, ge=1)
    engine_threads: int | None = Field(default=None, ge=1)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Other ServingSettings fields (names without NEWSDESK_)."
    )

    def overrides(self) -> dict[str, Any]:
        """The settings this app overrides, by ServingSettings field name (not yet validated)."""
        overrides: dict[str, Any] = dict(self.settings)
        for name in _OVERRIDE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                overrides[name] = value
        if self.profile is not None:
            overrides["model_profile"] = self.profile
        if self.summarize_loop is not None:
            overrides["summarize_loop_enabled"] = self.summarize_loop
        return overrides

    def apply_to(self, base: ServingSettings | None = None) -> ServingSettings:
        """``base`` (default: read from the environment) with this app's overrides, narrowed to
        the serving section: that is all the deployments receive."""
        overrides = self.overrides()
        if base is None:
            return ServingSettings(**overrides)
        # validate the overrides alone (ServingSettings' types and bounds), then lay them on base
        checked = ServingSettings(**overrides)
        serving = base.section(ServingSettings)
        return serving.model_copy(update={name: getattr(checked, name) for name in overrides})


_OVERRIDE_FIELDS = (
    "database_url",
    "redis_url",
    "api_key",
    "state_dir",
    "cache_max_entries",
    "cache_ttl_s",
    "engine_threads",
)


def summarizer_actor_options(profile: ModelProfile, options: SummarizerOptions) -> dict[str, Any]:
    """``ray_actor_options`` of a Summarizer replica: GPUs from the profile, CPUs otherwise."""
    gpus = options.num_gpus
    if gpus is None:
        gpus = float(profile.deepspeed.tensor_parallel) if profile.device == "cuda" else 0.0
    cpus = options.num_cpus if options.num_cpus is not None else 1.0
    actor_options: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        actor_options["num_gpus"] = gpus
    if options.resources:
        actor_options["resources"] = dict(options.resources)
    return actor_options


def light_actor_options(args: AppArgs) -> dict[str, Any]:
    """``ray_actor_options`` of a light deployment's replica: no CPU, ``light_resources``."""
    if not args.light_resources:
        return dict(LIGHT_ACTOR_OPTIONS)
    return {**LIGHT_ACTOR_OPTIONS, "resources": dict(args.light_resources)}


def build_app(args: AppArgs) -> Application:
    """The application builder named in serve_config.yaml (exactly one parameter: Serve's rule)."""
    if isinstance(args, dict):  # called directly with a plain dict
        args = AppArgs.model_validate(args)
    return compose(args)


def compose(
    args: AppArgs,
    settings: ServingSettings | None = None,
    services: dict[str, Any] | None = None,
) -> Application:
    """Ingress -> CacheLookup -> Summarizer (+ the summarization loop and, with
    ``stories_enabled``, the story assigner), on ``settings`` (default: the environment's)
    with ``args``' overrides. The model profile is parsed here, once, and the Summarizer gets
    the parsed ModelProfile.

    ``services``: other bound deployments of the same application, by name (a layer above
    adds them: ``cluster.app`` adds feed ingestion, which serving may not import). They are
    bound to the Ingress, which is how Serve deploys them with the app, and ``/v1/stats``
    shows their ``status()``."""
    settings = args.apply_to(settings)
    light = light_actor_options(args)
    profile = load_profile(settings.model_profile)
    opts = args.summarizer
    batch = opts.user_config.max_batch_size
    scaling: dict[str, Any]
    if opts.autoscaling_config is not None:
        scaling = {"autoscaling_config": opts.autoscaling_config}
        if opts.num_replicas == "auto":
            scaling["num_replicas"] = "auto"
    else:
        scaling = {"num_replicas": opts.num_replicas if opts.num_replicas is not None else 1}
    summarizer = SummarizerDeployment.options(
        **scaling,
        max_ongoing_requests=opts.max_ongoing_requests or 2 * batch,
        max_queued_requests=opts.max_queued_requests,
        ray_actor_options=summarizer_actor_options(profile, opts),
        # `adapter` only when given: left out, the replica serves the promoted one
        user_config=opts.user_config.model_dump(exclude=_unset_adapter(opts.user_config)),
        # loading a model takes a while on 2 cores; a slow health check must not kill it
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=60,
    ).bind(profile, settings)
    lookup = CacheLookupDeployment.options(
        num_replicas=args.cache_lookup_replicas,
        max_ongoing_requests=LIGHT_MAX_ONGOING,
        ray_actor_options=light,
    ).bind(summarizer, settings)
    loop = None
    if settings.summarize_loop_enabled:
        stories = None
        if settings.stories_enabled:  # stories are grouped beside the loop, as it runs
            webhooks = None
            if settings.webhooks_enabled:  # webhook events come from stories
                webhooks = WebhookDispatcherDeployment.options(
                    max_ongoing_requests=LIGHT_MAX_ONGOING, ray_actor_options=light
                ).bind(settings)
            stories = StoryAssignerDeployment.options(
                num_replicas=1,
                max_ongoing_requests=LIGHT_MAX_ONGOING,
                ray_actor_options=light,
            ).bind(settings, webhooks)
        loop = SummarizationLoopDeployment.options(
            num_replicas=1,
            max_ongoing_requests=LIGHT_MAX_ONGOING,
            ray_actor_options=light,
        ).bind(lookup, summarizer, settings, stories)
    return IngressDeployment.options(
        num_replicas=args.ingress_replicas,
        max_ongoing_requests=LIGHT_MAX_ONGOING,
        ray_actor_options=light,
    ).bind(lookup, summarizer, settings, loop, services)


def _unset_adapter(config: SummarizerConfig) -> set[str] | None:
    return None if "adapter" in config.model_fields_set else {"adapter"}
