"""The Serve configs build: serve_config.yaml (local) and cluster/serve_config.gpu.yaml (the
production GPU cluster), validated by Serve's schema and built into the application exactly
as ``serve deploy`` builds it, without GPUs or a cluster."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app as serve_build_app
from ray.serve.schema import ServeDeploySchema

from cluster.app import NewsdeskArgs
from serving.deployments.builder import AppArgs, SummarizerOptions, compose
from serving.deployments.summarizer import SummarizerConfig

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = {"local": ROOT / "serve_config.yaml", "gpu": ROOT / "cluster" / "serve_config.gpu.yaml"}
LIGHT = (
    "Ingress",
    "CacheLookup",
    "SummarizationLoop",
    "StoryAssigner",
    "WebhookDispatcher",
    "FeedIngestion",
)
EXPECTED = {"Summarizer", *LIGHT}


def _built(config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the app's config, its deployments by name after the config's overrides)."""
    raw = yaml.safe_load(config_path.read_text())
    schema = ServeDeploySchema.model_validate(raw)  # what `serve deploy` checks first
    (app_schema,) = schema.applications
    (raw_app,) = raw["applications"]
    module, attr = app_schema.import_path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    app = call_user_app_builder_with_args_if_necessary(builder, app_schema.args)
    built = serve_build_app(app, name=app_schema.name)
    deployments: dict[str, Any] = {}
    for d in built.deployments:
        deployments[d.name] = {
            "ray_actor_options": dict(d.ray_actor_options or {}),
            "max_ongoing_requests": d.max_ongoing_requests,
            "user_config": d.user_config,
            "num_replicas": d.num_replicas,
            "autoscaling_config": d._deployment_config.autoscaling_config,
        }
    names = set(deployments)
    for override in raw_app.get("deployments", []):
        name = override["name"]
        assert name in names, f"{config_path.name}: no deployment {name!r}"
        for key in ("ray_actor_options", "max_ongoing_requests", "user_config", "num_replicas"):
            if key in override:
                deployments[name][key] = override[key]
    return raw_app, deployments


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_config_builds_the_whole_application(which: str) -> None:
    app, deployments = _built(CONFIGS[which])
    assert app["import_path"] == "cluster.app:build_app"  # the whole system, ingestion too
    assert "working_dir" not in (app.get("runtime_env") or {})  # Ray 2.60: remote URIs only
    assert set(deployments) == EXPECTED
    summarizer = deployments["Summarizer"]
    user_config = SummarizerConfig.model_validate(summarizer["user_config"])
    # @serve.batch batches are capped by max_ongoing_requests
    assert summarizer["max_ongoing_requests"] >= user_config.max_batch_size
    for light in LIGHT:
        assert deployments[light]["ray_actor_options"]["num_cpus"] == 0
    for light in LIGHT[:-1]:  # FeedIngestion takes no requests but status()
        assert deployments[light]["max_ongoing_requests"] >= 100
    # `adapter` left out: replicas serve the profile's promoted adapter (kept on redeploy)
    assert "adapter" not in summarizer["user_config"]


def test_local_config_fits_this_machine() -> None:
    app, deployments = _built(CONFIGS["local"])
    http = yaml.safe_load(CONFIGS["local"].read_text())["http_options"]
    assert http["host"] == "127.0.0.1" and http["port"] != 6379
    summarizer = deployments["Summarizer"]
    assert summarizer["ray_actor_options"] == {"num_cpus": 1}  # no GPU asked for
    assert summarizer["num_replicas"] == 1
    assert NewsdeskArgs.model_validate(app["args"]).profile == "cpu-small"


def test_gpu_config_asks_for_gpus_autoscaling_and_redis() -> None:
    app, deployments = _built(CONFIGS["gpu"])
    args = NewsdeskArgs.model_validate(app["args"])
    assert args.profile == "gpu-7b"
    assert args.redis_url and args.redis_url.startswith("redis://")
    assert args.database_url is None and args.api_key is None  # secrets: from the environment
    summarizer = deployments["Summarizer"]
    assert summarizer["ray_actor_options"]["num_gpus"] == 1
    scaling = summarizer["autoscaling_config"]
    assert scaling is not None and scaling.min_replicas >= 2 and scaling.max_replicas >= 4
    for light in LIGHT:
        assert "newsdesk_cpu" in deployments[light]["ray_actor_options"]["resources"]


def test_gpu_count_follows_the_profile() -> None:
    """Without num_gpus, a CUDA profile asks for its tensor-parallel size; a CPU one for none."""
    gpu = _summarizer_options(AppArgs(profile="gpu-7b"))
    cpu = _summarizer_options(AppArgs(profile="cpu-small"))
    assert gpu["num_gpus"] == 1 and "num_gpus" not in cpu


def test_batch_size_above_max_ongoing_requests_is_refused() -> None:
    with pytest.raises(ValueError, match="batches could never fill"):
        SummarizerOptions(max_ongoing_requests=4, user_config=SummarizerConfig(max_batch_size=8))
    with pytest.raises(ValueError):
        AppArgs.model_validate({"profile": "cpu-small", "replicas": 3})  # unknown field


def _summarizer_options(args: AppArgs) -> dict[str, Any]:
    built = serve_build_app(compose(args), name="t")
    (summarizer,) = [d for d in built.deployments if d.name == "Summarizer"]
    return dict(summarizer.ray_actor_options or {})


def test_story_assigner_runs_beside_the_loop_when_stories_are_enabled() -> None:
    def names(args: AppArgs) -> set[str]:
        return {d.name for d in serve_build_app(compose(args), name="t").deployments}

    both = names(AppArgs(summarize_loop=True, settings={"stories_enabled": True}))
    assert {"SummarizationLoop", "StoryAssigner", "WebhookDispatcher"} <= both
    no_stories = names(AppArgs(summarize_loop=True, settings={"stories_enabled": False}))
    assert "SummarizationLoop" in no_stories and "StoryAssigner" not in no_stories
    assert "WebhookDispatcher" not in no_stories  # webhook events come from stories
    no_hooks = names(AppArgs(summarize_loop=True, settings={"webhooks_enabled": False}))
    assert "StoryAssigner" in no_hooks and "WebhookDispatcher" not in no_hooks
    no_loop = names(AppArgs(summarize_loop=False, settings={"stories_enabled": True}))
    assert not {"SummarizationLoop", "StoryAssigner", "WebhookDispatcher"} & no_loop


def test_placement_comes_from_the_args() -> None:
    """light_resources on every light part, feed ingestion included; the Summarizer's own
    resources (a stand-in accelerator) beside its CPUs; an explicit adapter stays a pin."""
    from cluster.app import compose as compose_all

    args = NewsdeskArgs(
        profile="cpu-small",
        summarize_loop=True,
        light_resources={"newsdesk_cpu": 0.25},
        summarizer=SummarizerOptions(
            resources={"newsdesk_accel": 1}, user_config=SummarizerConfig(adapter=None)
        ),
    )
    built = {d.name: d for d in serve_build_app(compose_all(args), name="t").deployments}
    assert set(built) >= EXPECTED
    for light in LIGHT:
        assert built[light].ray_actor_options["resources"] == {"newsdesk_cpu": 0.25}, light
    summarizer = built["Summarizer"]
    assert summarizer.ray_actor_options == {"num_cpus": 1.0, "resources": {"newsdesk_accel": 1}}
    assert summarizer.user_config["adapter"] is None  # given explicitly: pins the bare base
    off = NewsdeskArgs(profile="cpu-small", ingestion={"enabled": False})
    names = {d.name for d in serve_build_app(compose_all(off), name="t").deployments}
    assert "FeedIngestion" not in names
