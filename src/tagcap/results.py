"""Bench results on disk: rows kept as they finish, a rerun does only what is missing, and
several seeds summarised as mean ± standard deviation.

`results.json` is `{"rows": [...], "summary": [...]}`: one row per (recipe, decision rule, seed)
(captioning: per beam width and seed), and one summary row per (recipe, rule) with the mean, the
sample standard deviation (ddof=1; 0 for one seed) and the list of seeds. The file is rewritten
atomically after every finished unit of work (a recipe trained and scored for one seed), so a bench
killed half-way keeps every finished row, and the same command run again skips them.
Older runs wrote a bare list of rows; `read_rows` reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from tagcap import atomic
from tagcap.errors import ConfigError, TagcapError

RESULTS = "results.json"


def read_rows(path: str | Path) -> list[dict]:
    """The per-seed rows of a results file, old (a list, or one `evaluate --json` row) or new format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TagcapError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and "rows" in data:
        return list(data["rows"])
    return data if isinstance(data, list) else [data]


def read_summary(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return list(data.get("summary", [])) if isinstance(data, dict) else []


def _get(row: dict, dotted: str):
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def mean_sd(values: Iterable[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "sd": None}
    return {"mean": round(float(v.mean()), 5), "sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 5)}


def summarize(rows: list[dict], group_by: tuple[str, ...], metrics: tuple[str, ...]) -> list[dict]:
    """One row per group (in first-seen order): `seeds`, and {"mean", "sd"} for each dotted metric path."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group_by), []).append(row)
    out = []
    for key, members in groups.items():
        members = sorted(members, key=lambda r: r.get("seed", 0))
        out.append({**dict(zip(group_by, key)), "seeds": [r.get("seed") for r in members],
                    **{m: mean_sd(_get(r, m) for r in members) for m in metrics}})
    return out


def training_state(out: Path, recipe: dict, seed: int) -> Path:
    """Where one (recipe, seed)'s training saves its state in a bench's output folder, until its rows are
    in results.json: a killed bench resumes that training."""
    return Path(out) / "train-state" / f"{recipe['name']}-seed{seed}"


class RowStore:
    """The rows of one bench output folder, written atomically after every `add`.

    `identity` holds what every row must share (dataset, backbone, input size, refit ...): rows on
    disk made with other settings are refused, naming the field, instead of being mixed in."""

    def __init__(self, out: str | Path, identity: dict, unit_key: Callable[[dict], tuple],
                 summarize_rows: Callable[[list[dict]], list[dict]]):
        self.path = Path(out) / RESULTS
        self.identity, self.unit_key, self.summarize_rows = identity, unit_key, summarize_rows
        self.rows: list[dict] = []
        if self.path.is_file():
            for row in read_rows(self.path):
                diffs = [f"{k}: {row.get(k)!r} on disk, {v!r} now" for k, v in identity.items() if row.get(k) != v]
                if diffs:
                    raise ConfigError(f"{self.path} holds rows of another run ({'; '.join(diffs)}); give another "
                                      "--out, or delete it to start over")
                self.rows.append(row)

    def done(self, *key) -> bool:
        return any(self.unit_key(r) == key for r in self.rows)

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self.write()

    def write(self) -> None:
        atomic.write_json(self.path, {"rows": self.rows, "summary": self.summarize_rows(self.rows)})

    def summary(self) -> list[dict]:
        return self.summarize_rows(self.rows)
