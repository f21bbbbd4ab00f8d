"""The model registry in PostgreSQL (migration 004): training runs and promoted adapters.

Every fine-tuning run is a row of ``training_runs`` (config, data, metrics, report, adapter
path, status), created when the run starts and finished when it ends. Promotion appends a row
to ``adapter_promotions``; a profile serves the adapter of its latest promotion (none: the bare
base model). A Summarizer replica reads the current promotion when it starts or is
reconfigured (``serving.summaries.promotions``, where the query lives: serving reads these tables
without importing train; re-exported here), and :func:`push_to_serve` updates a running app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from serving.summaries.promotions import Promotion, current_promotions, promoted_adapter


class RegistryError(LookupError):
    """A run that does not exist or cannot be promoted (message says why)."""


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    profile: str
    status: str
    prompt_version: str | None
    config: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    report: dict[str, Any]
    adapter_path: str | None
    merged_path: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    promoted: bool = False


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _load(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


_RUN_COLUMNS = (
    "r.id, r.name, r.profile, r.status, r.prompt_version, r.config, r.data, r.metrics, "
    "r.report, r.adapter_path, r.merged_path, r.error, r.started_at, r.finished_at"
)


def _run(row: asyncpg.Record, promoted: bool = False) -> Run:
    return Run(
        id=row["id"],
        name=row["name"],
        profile=row["profile"],
        status=row["status"],
        prompt_version=row["prompt_version"],
        config=_load(row["config"]),
        data=_load(row["data"]),
        metrics=_load(row["metrics"]),
        report=_load(row["report"]),
        adapter_path=row["adapter_path"],
        merged_path=row["merged_path"],
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        promoted=promoted,
    )


async def start_run(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    name: str,
    profile: str,
    config: dict[str, Any],
    data: dict[str, Any],
    prompt_version: str,
) -> int:
    """Record a run as running (a re-submitted name, i.e. a resume, reuses its row)."""
    return await conn.fetchval(
        """
        INSERT INTO training_runs (name, profile, prompt_version, config, data, status)
        VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, 'running')
        ON CONFLICT (name) DO UPDATE SET
            profile = EXCLUDED.profile, prompt_version = EXCLUDED.prompt_version,
            config = EXCLUDED.config, data = EXCLUDED.data, status = 'running',
            error = NULL, finished_at = NULL
        RETURNING id
        """,
        name,
        profile,
        prompt_version,
        _json(config),
        _json(data),
    )


async def finish_run(
    conn: asyncpg.Connection | asyncpg.Pool,
    run_id: int,
    *,
    metrics: dict[str, Any],
    report: dict[str, Any],
    adapter_path: Path | str | None,
    merged_path: Path | str | None = None,
) -> None:
    await conn.execute(
        """
        UPDATE training_runs SET status = 'finished', metrics = $2::jsonb, report = $3::jsonb,
            adapter_path = $4, merged_path = $5, finished_at = now(), error = NULL
        WHERE id = $1
        """,
        run_id,
        _json(metrics),
        _json(report),
        str(adapter_path) if adapter_path else None,
        str(merged_path) if merged_path else None,
    )


async def update_metrics(
    conn: asyncpg.Connection | asyncpg.Pool, run_id: int, patch: dict[str, Any]
) -> None:
    """Merge ``patch`` into a run's metrics (e.g. a ROUGE-L measured after the run)."""
    done = await conn.execute(
        "UPDATE training_runs SET metrics = metrics || $2::jsonb WHERE id = $1",
        run_id,
        _json(patch),
    )
    if done.endswith(" 0"):
        raise RegistryError(f"no training run with id {run_id}")


async def fail_run(conn: asyncpg.Connection | asyncpg.Pool, run_id: int, error: str) -> None:
    await conn.execute(
        "UPDATE training_runs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
        run_id,
        error[:4000],
    )


async def list_runs(
    conn: asyncpg.Connection | asyncpg.Pool, profile: str | None = None, limit: int = 50
) -> list[Run]:
    promoted = {p.run_id for p in await current_promotions(conn) if p.run_id is not None}
    rows = await conn.fetch(
        f"SELECT {_RUN_COLUMNS} FROM training_runs r "
        "WHERE ($1::text IS NULL OR r.profile = $1) ORDER BY r.id DESC LIMIT $2",
        profile,
        limit,
    )
    return [_run(row, row["id"] in promoted) for row in rows]


async def get_run(conn: asyncpg.Connection | asyncpg.Pool, run_id: int) -> Run:
    row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM training_runs r WHERE r.id = $1", run_id)
    if row is None:
        raise RegistryError(f"no training run with id {run_id}")
    return _run(row)


async def promote(
    conn: asyncpg.Connection | asyncpg.Pool,
    run_id: int | None,
    *,
    profile: str | None = None,
    note: str | None = None,
) -> Promotion:
    """Make ``run_id``'s adapter the one its profile serves (``None`` + ``profile``: the base).

    Only a finished run whose adapter folder exists can be promoted.
    """
    if run_id is None:
        if not profile:
            raise RegistryError("un-promoting needs the profile")
        await conn.execute(
            "INSERT INTO adapter_promotions (profile, run_id, note) VALUES ($1, NULL, $2)",
            profile,
            note,
        )
    else:
        run = await get_run(conn, run_id)
        if run.status != "finished":
            raise RegistryError(f"run {run_id} is {run.status}, only a finished run is promoted")
        if not run.adapter_path or not (Path(run.adapter_path) / "adapter_config.json").is_file():
            raise RegistryError(f"run {run_id} has no adapter on disk ({run.adapter_path})")
        if profile and profile != run.profile:
            raise RegistryError(f"run {run_id} was trained for {run.profile!r}, not {profile!r}")
        await conn.execute(
            "INSERT INTO adapter_promotions (profile, run_id, note) VALUES ($1, $2, $3)",
            run.profile,
            run.id,
            note,
        )
        profile = run.profile
    current = await promoted_adapter(conn, profile)
    assert current is not None
    return current


def serve_user_config_patch(promotion: Promotion | None) -> dict[str, Any]:
    """The Summarizer ``user_config`` keys (``serving.deployments.summarizer.SummarizerConfig``)
    that make it serve ``promotion``: ``adapter`` is the PEFT folder, None for the base."""
    if promotion is None or promotion.adapter_path is None:
        return {"adapter": None}
    return {"adapter": promotion.adapter_path}


def push_to_serve(
    address: str,
    promotion: Promotion | None,
    *,
    deployment: str = "Summarizer",
) -> list[str]:
    """Update the ``user_config`` of every running ``deployment`` to serve ``promotion``.

    Reads the deployed Serve config through the dashboard's REST API (``address``: the
    dashboard, e.g. ``http://127.0.0.1:8265``; token auth is handled by Ray's SDK as for the
    ``serve`` CLI) and re-submits it with only that deployment's ``user_config`` changed: Serve
    then calls the replicas' ``reconfigure`` in place, without a restart. Returns the
    ``app/deployment`` names changed.
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(address)
    details = client.get_serve_details()
    patch = serve_user_config_patch(promotion)
    applications: list[dict[str, Any]] = []
    changed: list[str] = []
    for app_name, app in (details.get("applications") or {}).items():
        config = app.get("deployed_app_config")
        if not config:
            continue
        config = json.loads(json.dumps(config))  # a private copy to edit
        running = set((app.get("deployments") or {}).keys())
        entries = config.setdefault("deployments", [])
        entry = next((d for d in entries if d.get("name") == deployment), None)
        if entry is None and deployment in running:
            entry = {"name": deployment}
            entries.append(entry)
        if entry is not None:
            before = dict(entry.get("user_config") or {})
            after = {**before, **patch}
            if after != before:
                entry["user_config"] = after
                changed.append(f"{app_name}/{deployment}")
        applications.append(config)
    if changed:
        body: dict[str, Any] = {"applications": applications}
        for key in ("proxy_location", "http_options", "grpc_options", "logging_config"):
            if details.get(key) is not None:
                body[key] = details[key]
        client.deploy_applications(body)
    return changed
