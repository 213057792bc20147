"""Aligned text tables for people (`--format table`), JSON for scripts (`--format json`)."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence, TextIO


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) if value else "-"
    return " ".join(str(value).split())  # one line per row, whatever the value holds


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    text = [[h.upper() for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = []
    for r in text:
        padded = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def emit_json(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(data, indent=4, sort_keys=False) + "\n")
