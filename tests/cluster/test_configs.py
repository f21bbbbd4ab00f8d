"""The cluster configs: the Ray cluster launcher config validates with Ray's own schema; the
KubeRay RayService has what KubeRay needs, embeds the production Serve config verbatim, and
that config builds the application (without GPUs: built, never deployed); what the Serve
config asks of its nodes exists in both the launcher's node types and the KubeRay groups."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.util import validate_config
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app as serve_build_app
from ray.serve.schema import ServeDeploySchema

from serving.deployments.builder import FAST_PATH_ENV

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "cluster" / "ray-cluster.gpu.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
SERVE_GPU = ROOT / "cluster" / "serve_config.gpu.yaml"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return _yaml(RAYSERVICE)


def _demands(serve_config: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Resources each deployment's replica asks for, once the app is built and the config's
    per-deployment overrides applied (as ``serve deploy`` does)."""
    schema = ServeDeploySchema.model_validate(serve_config)
    out: dict[str, dict[str, float]] = {}
    for app_schema, raw_app in zip(schema.applications, serve_config["applications"], strict=True):
        module, attr = app_schema.import_path.split(":")
        builder = getattr(importlib.import_module(module), attr)
        app = call_user_app_builder_with_args_if_necessary(builder, app_schema.args)
        built = serve_build_app(app, name=app_schema.name)
        options = {d.name: dict(d.ray_actor_options or {}) for d in built.deployments}
        for override in raw_app.get("deployments", []):
            assert override["name"] in options, override["name"]
            if "ray_actor_options" in override:
                options[override["name"]] = override["ray_actor_options"]
        for name, opts in options.items():
            demand = {"CPU": float(opts.get("num_cpus", 1)), "GPU": float(opts.get("num_gpus", 0))}
            demand.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
            out[name] = demand
    return out


def _fits(demand: dict[str, float], node: dict[str, float]) -> bool:
    return all(v <= node.get(k, 0.0) for k, v in demand.items() if v > 0)


def test_launcher_config_validates() -> None:
    config = _yaml(LAUNCHER)
    validate_config(copy.deepcopy(config))  # Ray's JSON schema for `ray up`
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # head: no replicas
    # Ray's GCS must not take Redis's port
    assert "--port=6379" not in " ".join(config["head_start_ray_commands"])
    # Serve's fast path is read when Ray starts: every node's `ray start` gets it
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert all(f"{name}={value}" in start for name, value in FAST_PATH_ENV.items())
    bad = copy.deepcopy(config)
    bad["available_node_types"]["cpu"]["max_workers"] = "two"
    with pytest.raises(Exception, match="two"):
        validate_config(bad)  # the validation really checks


SECRETS = {"NEWSDESK_DATABASE_URL", "NEWSDESK_API_KEY"}


def test_rayservice_has_what_kuberay_needs(rayservice: dict[str, Any]) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    assert rayservice["metadata"]["name"]
    spec = rayservice["spec"]
    assert isinstance(spec["serveConfigV2"], str)  # KubeRay takes it as a YAML string
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in head_container["ports"]}
    assert {8265, 8000} <= ports
    images = {head_container["image"]}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu-h100", "cpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        env = {e["name"] for e in container["env"]}
        assert {"NEWSDESK_DATABASE_URL", "NEWSDESK_API_KEY"} <= env
        # secrets come from a Secret, never inline
        secrets = [e for e in container["env"] if e["name"] in SECRETS]
        assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in secrets)
        # Serve's fast path (HAProxy + gRPC) is read when Ray starts: set on every node
        values = {e["name"]: e.get("value") for e in container["env"]}
        assert all(values.get(name) == "1" for name in FAST_PATH_ENV), values
    assert len(images) == 1  # one image everywhere: the code must match on every node
    gpu = groups["gpu-h100"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1 and gpu["requests"]["nvidia.com/gpu"] == 1


def test_rayservice_embeds_the_production_serve_config(rayservice: dict[str, Any]) -> None:
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded == _yaml(SERVE_GPU)


def _kuberay_nodes(rayservice: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Ray resources of one pod of each group, as `ray start` would report them."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    nodes = {}
    head = cluster["headGroupSpec"]
    nodes["head"] = {"CPU": float(head["rayStartParams"]["num-cpus"])}
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        node = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
        custom = group["rayStartParams"].get("resources")
        if custom:
            node.update(json.loads(json.loads(custom)))  # KubeRay's quoted JSON string
        nodes[group["groupName"]] = node
    return nodes


def _launcher_nodes() -> dict[str, dict[str, float]]:
    """The launcher's node types; CPU/GPU of the AWS types it names (auto-detected there)."""
    detected = {"m6i.2xlarge": {"CPU": 8.0}, "p5.4xlarge": {"CPU": 16.0, "GPU": 1.0}}
    nodes = {}
    for name, spec in _yaml(LAUNCHER)["available_node_types"].items():
        node = dict(detected[spec["node_config"]["InstanceType"]])
        node.update({k: float(v) for k, v in (spec.get("resources") or {}).items()})
        nodes[name] = node
    return nodes


def test_embedded_serve_config_builds_and_fits_both_clusters(rayservice: dict[str, Any]) -> None:
    demands = _demands(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    light_parts = (
        "Ingress",
        "CacheLookup",
        "SummarizationLoop",
        "StoryAssigner",
        "FeedIngestion",
        "WebhookDispatcher",
    )
    assert set(demands) == {"Summarizer", *light_parts}
    assert demands["Summarizer"]["GPU"] == 1  # one H100 per model replica
    for light in light_parts:
        assert demands[light]["GPU"] == 0 and demands[light].get("newsdesk_cpu", 0) > 0
    for cluster_name, nodes in (
        ("kuberay", _kuberay_nodes(rayservice)),
        ("launcher", _launcher_nodes()),
    ):
        for deployment, demand in demands.items():
            fits = [n for n, node in nodes.items() if _fits(demand, node)]
            assert fits, f"{cluster_name}: no node fits {deployment} {demand}"
            assert "head" not in fits, f"{cluster_name}: {deployment} could land on the head"
        gpu_nodes = [n for n, node in nodes.items() if node.get("GPU", 0) >= 1]
        assert [n for n in gpu_nodes if _fits(demands["Summarizer"], nodes[n])] == gpu_nodes
