"""The ``newsdesk`` command. Each command group lives in its own module of this package."""

from __future__ import annotations

import typer

from cluster.cli import db as db_cmd
from cluster.cli import feeds as feeds_cmd
from cluster.cli import ingest as ingest_cmd
from cluster.cli import model as model_cmd
from cluster.cli import models as models_cmd
from cluster.cli import stack as stack_cmd
from cluster.cli import status as status_cmd
from cluster.cli import webhooks as webhooks_cmd

app = typer.Typer(
    name="newsdesk",
    help="Newsdesk: RSS feeds in, faithful short summaries with an importance rating out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_cmd.register(app)
feeds_cmd.register(app)
ingest_cmd.register(app)
stack_cmd.register(app)
models_cmd.register(app)
model_cmd.register(app)
status_cmd.register(app)
webhooks_cmd.register(app)


def main() -> None:
    app()
