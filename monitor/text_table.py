"""Fixed-width text tables for logs and benchmark output (one helper for all of labrl)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

# (header, key of the row or a function of it, format spec)
Column = tuple[str, "str | Callable[[dict[str, Any]], Any]", str]


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column] | None = None) -> str:
    """Right-aligned columns under a rule. Without `columns`: every key of the first row, floats
    with 3 decimals."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = [(key, key, ".3f" if isinstance(rows[0][key], float) else "") for key in rows[0]]
    cells = [[format(_cell(row, key), fmt) for _, key, fmt in columns] for row in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    lines = [" ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)),
             " ".join("-" * w for w in widths)]
    lines += [" ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: Any) -> Any:
    value = key(row) if callable(key) else row.get(key, "")
    return "" if value is None else value
