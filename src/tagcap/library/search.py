"""`tagcap search`: find photos in a library by words, tags, scores and dates.

A query is split into words. A photo matches a word when the word is in its chosen labels or its
caption (FTS5, Porter-stemmed: "dogs" finds "dog") or is one of its scored labels (the rule's
choices and the models' other best labels); it must match every word. Photos are ranked by

    relevance = sum over the query's words of the best score of a label equal to that word
                (or equal to the whole query, for labels of several words: "golden retriever")
              + 0.5 * b / (1 + b),   b = -BM25 of the query's words (any of them) over labels and caption

so a confident tag outranks a passing mention in a caption, and the caption decides among photos
with no such tag. Filters: `tags` (a chosen label each, any model), `not_tags`, `min_score` (then
each word must be a label scored at least that: captions no longer match alone; `tags` too), `after` / `before` (EXIF date; photos without one are left
out when either is given). Without words, the photos passing the filters, best `tags` scores first.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from tagcap.errors import ConfigError
from tagcap.library.store import Library

BM25_WEIGHT = 0.5


@dataclass
class Hit:
    path: str
    relevance: float
    taken: str | None
    caption: str | None
    tags: list[dict] = field(default_factory=list)  # chosen labels: {"label", "score", "source"}, best first

    def to_dict(self) -> dict:
        return asdict(self)


def words(query: str) -> list[str]:
    return [w for w in re.findall(r"\w+", (query or "").lower()) if w]


def parse_date(text: str | None, option: str) -> str | None:
    """YYYY, YYYY-MM, YYYY-MM-DD or an ISO date-time, as the ISO prefix stored EXIF dates compare with."""
    if not text:
        return None
    t = text.strip()
    for fmt in ("%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            parsed = datetime.strptime(t, fmt)
        except ValueError:
            continue
        return parsed.isoformat() if "T" in fmt or " " in fmt else date(parsed.year, parsed.month, parsed.day).isoformat()
    raise ConfigError(f"{option} {text!r}: expected a date such as 2024, 2024-07 or 2024-07-31")


def search(library: Library, query: str = "", tags=(), not_tags=(), min_score: float | None = None,
           after: str | None = None, before: str | None = None, limit: int = 20, offset: int = 0) -> list[Hit]:
    if limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    terms = words(query)
    floor = float(min_score) if min_score is not None else -1.0
    params: dict = {"floor": floor, "limit": limit, "offset": offset}
    ctes, score_terms = [], []
    for n, term in enumerate(terms):
        params[f"t{n}"] = term
        params[f"q{n}"] = f'"{term}"'
        by_text = "" if min_score is not None else f"SELECT rowid AS pid FROM photo_text WHERE photo_text MATCH :q{n} UNION "
        ctes.append(f"m{n} AS ({by_text}SELECT photo_id AS pid FROM tags WHERE label = :t{n} COLLATE NOCASE "
                    f"AND score >= :floor)")
    if terms:
        params["whole"] = " ".join(terms)
        labels = [f":t{n}" for n in range(len(terms))] + ([":whole"] if len(terms) > 1 else [])
        ctes.append("cand AS (" + " INTERSECT ".join(f"SELECT pid FROM m{n}" for n in range(len(terms))) + ")")
        ctes.append("tagscore AS (SELECT photo_id AS pid, SUM(best) AS s FROM (SELECT photo_id, lower(label) AS l, "
                    "MAX(score) AS best FROM tags WHERE label COLLATE NOCASE IN (" + ", ".join(labels) + ") "
                    "AND score >= :floor AND photo_id IN (SELECT pid FROM cand) GROUP BY photo_id, l) GROUP BY photo_id)")
        params["any"] = " OR ".join(f'"{t}"' for t in terms)
        ctes.append("textscore AS (SELECT rowid AS pid, -bm25(photo_text) AS b FROM photo_text "
                    "WHERE photo_text MATCH :any)")
        score_terms = ["COALESCE(tagscore.s, 0)", f"{BM25_WEIGHT} * COALESCE(textscore.b / (1 + textscore.b), 0)"]
        source = ("cand JOIN photos p ON p.id = cand.pid LEFT JOIN tagscore ON tagscore.pid = p.id "
                  "LEFT JOIN textscore ON textscore.pid = p.id")
    else:
        source = "photos p"
    where = ["p.error IS NULL"]
    for n, tag in enumerate(tags):
        params[f"tag{n}"] = tag
        where.append(f"EXISTS (SELECT 1 FROM tags x WHERE x.photo_id = p.id AND x.label = :tag{n} COLLATE NOCASE "
                     f"AND x.chosen = 1 AND x.score >= :floor)")
        if not terms:
            score_terms.append(f"(SELECT MAX(score) FROM tags x WHERE x.photo_id = p.id AND x.label = :tag{n} "
                               f"COLLATE NOCASE)")
    for n, tag in enumerate(not_tags):
        params[f"not{n}"] = tag
        where.append(f"NOT EXISTS (SELECT 1 FROM tags x WHERE x.photo_id = p.id AND x.label = :not{n} "
                     f"COLLATE NOCASE AND x.chosen = 1)")
    if after:
        params["after"] = parse_date(after, "--after")
        where.append("p.taken >= :after")
    if before:
        params["before"] = parse_date(before, "--before")
        where.append("p.taken < :before")
    relevance = " + ".join(score_terms) if score_terms else "0"
    sql = (("WITH " + ", ".join(ctes) + " ") if ctes else "") + \
        f"SELECT p.id, p.path, p.taken, {relevance} AS rel FROM {source} WHERE {' AND '.join(where)} " \
        f"ORDER BY rel DESC, p.path LIMIT :limit OFFSET :offset"
    rows = library.db.execute(sql, params).fetchall()
    return [_hit(library, pid, path, taken, rel) for pid, path, taken, rel in rows]


def _hit(library: Library, pid: int, path: str, taken: str | None, rel: float) -> Hit:
    tags = [{"label": label, "score": score, "source": name} for label, score, name in library.db.execute(
        "SELECT t.label, t.score, m.name FROM tags t JOIN models m ON m.id = t.model_id "
        "WHERE t.photo_id = ? AND t.chosen = 1 ORDER BY t.score DESC", (pid,))]
    caption = library.db.execute("SELECT text FROM captions WHERE photo_id = ? LIMIT 1", (pid,)).fetchone()
    return Hit(path, round(float(rel or 0.0), 4), taken, caption[0] if caption else None, tags)


def format_table(hits: list[Hit], width: int = 100) -> str:
    """Hits for people: rank, relevance, path, then the photo's tags and caption indented below."""
    if not hits:
        return "no photo matches"
    lines = []
    for n, h in enumerate(hits, 1):
        lines.append(f"{n:>3}  {h.relevance:6.3f}  {h.path}" + (f"  ({h.taken[:10]})" if h.taken else ""))
        shown = []
        for t in h.tags:
            shown.append(f"{t['label']} {t['score']:.2f}")
            if len(", ".join(shown)) > width - 20:
                shown[-1] = "..."
                break
        if shown:
            lines.append("             tags: " + ", ".join(shown))
        if h.caption:
            lines.append(f"             \"{h.caption}\"")
    return "\n".join(lines)
