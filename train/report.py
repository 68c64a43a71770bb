"""Parameter tables, checked against the seed articles' published counts."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from aectl.train.zoo import get_preset

# The first article's Keras-style summary: encoder convs, then decoder transposed convs.
SEED_CONV_ARTICLE_COUNTS = [588, 4632, 18480, 18456, 18480, 18456, 4620, 579]


def layer_counts(model) -> list[tuple[str, str, int]]:
    """(name, type, parameter count) for each layer with weights, excluding the entropy model."""
    rows = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False)]
        if own and not name.startswith("entropy"):
            rows.append((name, type(module).__name__, sum(p.numel() for p in own)))
    return rows


def parameter_table(preset_name: str, console: Console | None = None) -> list[tuple[str, str, int]]:
    console = console or Console(stderr=True)
    model = get_preset(preset_name).build()
    rows = layer_counts(model)
    table = Table(title=f"{preset_name} parameters")
    for col in ("layer", "type", "params"):
        table.add_column(col)
    for row in rows:
        table.add_row(row[0], row[1], f"{row[2]:,}")
    table.add_row("total", "", f"{sum(r[2] for r in rows):,}")
    console.print(table)
    if preset_name == "seed-conv":
        counts = [r[2] for r in rows]
        verdict = "matches" if counts == SEED_CONV_ARTICLE_COUNTS else "DOES NOT MATCH"
        console.print(f"{verdict} the article's counts {SEED_CONV_ARTICLE_COUNTS}")
    return rows
