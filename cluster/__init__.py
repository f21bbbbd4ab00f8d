"""How Newsdesk runs: the ``newsdesk`` CLI, the local one-command stack, Ray cluster configs."""
