"""How the CLI prints: one JSON document on one line for machines, aligned tables for people
(API.md "Command line"), timestamps in the API's ISO 8601 `Z` form either way."""

from __future__ import annotations

import json
from typing import Any

import click


def echo_json(value: Any) -> None:
    """Every machine-readable answer in one style: one JSON document on one line (pipe it to
    `jq .` to read), timestamps in the API's ISO 8601 `Z` form."""
    click.echo(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    from datetime import datetime

    from common.times import iso_time

    if isinstance(value, datetime):
        return iso_time(value)
    return str(value)


def echo_table(columns: list[str], rows: list[list[Any]]) -> None:
    """Aligned columns for people, a header line first; `-` for an empty cell."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="one JSON document (machines)")(f)
