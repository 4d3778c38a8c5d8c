"""`tagcap search`: find photos in a library by words, tags, scores and dates.

A query is split into words (a possessive 's dropped). A photo matches a word when the word is in
its text (FTS5, Porter-stemmed: "dogs" finds "dog"): its chosen labels, their concepts' synonyms and
broader concepts (a `husky` is found by `dog` and `animal`; a `jet` by `airplane`; `children` by
`child`; `tagcap.concepts`), and its caption; or when it is one of its scored labels (the rule's
choices and the models' other best labels). It must match every word. Photos are ranked by

    relevance = sum over the query's words of the best score of a label equal to that word or to
                its concept's name (`buildings`: building), or equal to the whole query (labels of
                several words: "golden retriever"),
                else 0.9 x the best score of a chosen label the word names by a synonym or more
                broadly (`dog`: a `husky` tag)
              + 0.5 * b / (1 + b),   b = -BM25 of the query's words (any of them) over labels and caption

so a confident tag outranks a passing mention in a caption, and the caption decides among photos
with no such tag. To answer in milliseconds on a million photos, the ranking is computed for
candidates only: the best-scored photos of each word's label (from an index on label and score)
and the text matches (BM25's best when there are at most 5,000, else the first ones, each counted
as b = 1); a text match outside BM25's best counts as the last of them. The candidate pool grows
until a page is full, nothing is left out, or it holds CANDIDATE_ROWS label rows (then a photo
matching every word with none of them among its words' best-scored is not found: the price of a
bounded answer to a query of many common words). Filters: `tags` (a chosen label each, any model), `not_tags`, `min_score` (then
each word must be a label scored at least that: captions no longer match alone; `tags` too), `after` / `before` (EXIF date; photos without one are left
out when either is given). Without words, the photos passing the filters, best `tags` scores first
(without `tags`, newest first).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from tagcap.errors import ConfigError
from tagcap.library.store import TEXT_COLUMNS, WHEN, Library

BM25_WEIGHT = 0.5
NARROWER_WEIGHT = 0.9  # a chosen label the word names by a synonym or more broadly, against one equal to it
MAX_NARROWER = 900  # labels looked up per word (SQLite's variables; `animal` names about 400 of them)
# What one search may ask, so that its cost stays bounded whatever is typed or sent: longer queries,
# more words or filters, or pages deeper than this are refused with the bound named
MAX_QUERY_CHARS = 1_000
MAX_WORDS = 16      # distinct words of a query
MAX_FILTERS = 16    # --tag and --not-tag values, each
MAX_HITS = 100_000  # offset + limit
CANDIDATE_ROWS = 5_000  # the candidate pool stops growing at this many rows over all the words' labels
# (or at 4 x offset + limit): words that are each common but rarely meet on one photo would otherwise
# grow it to every photo with any of them (10 s for 16 common words on 100,000 photos, measured)
BM25_RANKED = 5_000  # text matches scored by BM25 to pick candidates; above this many, the first ones
# (FTS5 scores every match to rank them: 373 ms for a word in 30 % of 1,000,000 photos, measured)


@dataclass
class Hit:
    id: int
    path: str
    relevance: float
    taken: str | None
    caption: str | None
    tags: list[dict] = field(default_factory=list)  # chosen labels: {"label", "score", "source"}, best first

    def to_dict(self) -> dict:
        return asdict(self)


def words(query: str) -> list[str]:
    """The query's words, lower case; a possessive 's dropped ("tiger's" is "tiger"), since the
    tokenizer would make the s a word of its own that nearly no photo's text has."""
    return [w for w in re.findall(r"\w+", re.sub(r"(\w)['\u2019]s\b", r"\1", (query or "").lower())) if w]


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


def query_words(query: str | None) -> list[str]:
    """The distinct words of a query, checked: a ConfigError for a query over MAX_QUERY_CHARS or
    MAX_WORDS, or one that has characters but no word (`"`, `*`, an emoji), which would otherwise
    match every photo. An empty query has no words (the filters alone choose)."""
    query = query or ""
    if len(query) > MAX_QUERY_CHARS:
        raise ConfigError(f"the query is {len(query):,} characters long; at most {MAX_QUERY_CHARS:,}")
    terms = list(dict.fromkeys(words(query)))
    if query.strip() and not terms:
        raise ConfigError(f"the query {query[:40]!r} has no word to search for (letters or digits)")
    if len(terms) > MAX_WORDS:
        raise ConfigError(f"the query has {len(terms)} different words; at most {MAX_WORDS}")
    return terms


def search(library: Library, query: str = "", tags=(), not_tags=(), min_score: float | None = None,
           after: str | None = None, before: str | None = None, limit: int = 20, offset: int = 0) -> list[Hit]:
    """The photos matching `query` and the filters, best first (see the module docstring). Bad
    arguments (a bound exceeded, a score outside 0-1, a date that is none) raise ConfigError."""
    if not 1 <= limit <= MAX_HITS:
        raise ConfigError(f"--limit {limit}: must be 1 to {MAX_HITS:,}")
    if not 0 <= offset <= MAX_HITS - limit:
        raise ConfigError(f"--offset {offset}: must be 0 to {MAX_HITS - limit:,} (at most {MAX_HITS:,} hits in all)")
    if min_score is not None and not 0.0 <= min_score <= 1.0:  # NaN fails both comparisons
        raise ConfigError(f"--min-score {min_score}: must be a number from 0 to 1")
    for option, values in (("--tag", tags), ("--not-tag", not_tags)):
        if len(values) > MAX_FILTERS:
            raise ConfigError(f"{option} given {len(values)} times; at most {MAX_FILTERS}")
        for value in values:
            if len(value) > MAX_QUERY_CHARS:
                raise ConfigError(f"{option}: a label of {len(value):,} characters; at most {MAX_QUERY_CHARS:,}")
    terms = query_words(query)
    filters, params = _filters(tags, not_tags, min_score, after, before)
    if not terms:
        return _browse(library, tags, filters, params, limit, offset)
    want = offset + limit
    n = max(4 * want, 200)
    cap = max(n, CANDIDATE_ROWS // (len(terms) + (len(terms) > 1)))  # per word's label, and per text
    while True:
        ranked, exhausted = _ranked(library, terms, min_score, filters, params, n)
        if len(ranked) >= want or exhausted or n >= cap:
            break
        n = min(4 * n, cap)
    return [_hit(library, pid, path, taken, rel) for pid, path, taken, rel in ranked[offset:want]]


def _filters(tags, not_tags, min_score, after, before) -> tuple[list[str], dict]:
    """SQL conditions on `photos p` for the filters, and their parameters."""
    params: dict = {"floor": float(min_score) if min_score is not None else -1.0}
    where = ["p.error IS NULL"]
    for n, tag in enumerate(tags):
        params[f"tag{n}"] = tag
        where.append(f"EXISTS (SELECT 1 FROM tags x WHERE x.photo_id = p.id AND +x.label = :tag{n} COLLATE NOCASE "
                     f"AND x.chosen = 1 AND x.score >= :floor)")
    for n, tag in enumerate(not_tags):
        params[f"not{n}"] = tag
        where.append(f"NOT EXISTS (SELECT 1 FROM tags x WHERE x.photo_id = p.id AND +x.label = :not{n} "
                     f"COLLATE NOCASE AND x.chosen = 1)")
    if after:
        params["after"] = parse_date(after, "--after")
        where.append("p.taken >= :after")
    if before:
        params["before"] = parse_date(before, "--before")
        where.append("p.taken < :before")
    return where, params


def _browse(library: Library, tags, where: list[str], params: dict, limit: int, offset: int) -> list[Hit]:
    """No words: the photos passing the filters, by the first --tag's score (else newest first: the
    EXIF date, else the file's), streamed from an index so a large library answers as fast as a small one."""
    if not tags:
        sql = f"SELECT p.id, p.path, p.taken, 0 FROM photos p WHERE {' AND '.join(where)} ORDER BY {WHEN} DESC, " \
              "p.path LIMIT :limit OFFSET :offset"
        return [_hit(library, *row) for row in library.db.execute(sql, {**params, "limit": limit, "offset": offset})]
    # walked down the (label, score) index; a photo two models gave the label to comes once
    sql = ("SELECT p.id, p.path, p.taken, t.score FROM tags t JOIN photos p ON p.id = t.photo_id "
           "WHERE t.label = :tag0 COLLATE NOCASE AND t.chosen = 1 AND " + " AND ".join(where) +
           " ORDER BY t.score DESC")
    seen, rows = set(), []
    for row in library.db.execute(sql, params):
        if row[0] not in seen:
            seen.add(row[0])
            rows.append(row)
            if len(rows) == offset + limit:
                break
    return [_hit(library, *row) for row in rows[offset:]]


def _ranked(library: Library, terms: list[str], min_score, where: list[str], params: dict, n: int):
    """The photos matching every word, best first, among the candidates: the `n` best-scored photos
    for each word's label, and the text matches (the `n` best by BM25 when there are at most
    BM25_RANKED of them, else the first `n`). Returns (rows, whether no candidate was left out)."""
    db = library.db
    exact = {t: _exact_labels(t) for t in terms}  # the word, and its concept's name (`buildings`: building)
    groups = list(exact.values()) + ([[" ".join(terms)]] if len(terms) > 1 else [])
    labels = list(dict.fromkeys(label for group in groups for label in group))
    cand: set[int] = set()
    exhausted = True
    for label in labels:
        got = [r[0] for r in db.execute("SELECT photo_id FROM tags WHERE label = ? COLLATE NOCASE AND score >= ? "
                                        "ORDER BY score DESC LIMIT ?", (label, params["floor"], n))]
        exhausted &= len(got) < n
        cand.update(got)
    match_all = " AND ".join(_fts_term(t) for t in terms)
    bm25: dict[int, float] = {}
    common = False
    if min_score is None:  # with a score floor, words must be labels: captions do not match alone
        count = len(db.execute("SELECT rowid FROM photo_text WHERE photo_text MATCH ? LIMIT ?",
                               (match_all, BM25_RANKED + 1)).fetchall())
        common = count > BM25_RANKED
        if common:  # too many to score: the first ones, all the same
            rows = db.execute("SELECT rowid, NULL FROM photo_text WHERE photo_text MATCH ? LIMIT ?",
                              (match_all, n)).fetchall()
        else:
            rows = db.execute("SELECT rowid, -bm25(photo_text) FROM photo_text WHERE photo_text MATCH ? "
                              "ORDER BY rank LIMIT ?", (match_all, n)).fetchall()
            bm25.update(rows)
        exhausted &= len(rows) < n
        cand.update(r[0] for r in rows)
    if not cand:
        return [], True
    ids = ",".join(str(i) for i in cand)
    # every word must be matched by a label (at or above the floor) or by the text
    matched = {i: 0 for i in cand}
    in_text = {i: 0 for i in cand}
    text_rows = {r[0] for r in rows} if min_score is None else set()
    by_label = {t: {r[0] for r in db.execute(f"SELECT DISTINCT photo_id FROM tags WHERE photo_id IN ({ids}) AND "
                                             f"+label COLLATE NOCASE IN ({','.join('?' * len(exact[t]))}) AND "
                                             f"score >= ?", (*exact[t], params["floor"]))}
                for t in terms}
    if min_score is None and len(terms) > 1:  # the text rows match every word already; the others are looked up
        in_texts = _text_matches(db, cand - text_rows, terms)
    for t in terms:
        if min_score is not None:
            by_text = set()
        elif len(terms) == 1:  # one word: the text rows match it, and so does the text of a photo with it as a
            # chosen label (the labels are in the text); a caption-only match outside the rows is not looked for
            by_text = text_rows | {r[0] for r in db.execute(
                f"SELECT photo_id FROM tags WHERE photo_id IN ({ids}) AND +label = ? AND chosen = 1", (t,))}
        else:
            by_text = text_rows | in_texts[t]
        for i in by_label[t] | by_text:
            matched[i] += 1
        for i in by_text:
            in_text[i] += 1
    keep = [i for i, k in matched.items() if k == len(terms)]
    if not keep:
        return [], exhausted
    ids = ",".join(str(i) for i in keep)
    # BM25 of text matches outside the ranked list: at most the last ranked one's (common words: 1)
    floor_b = 1.0 if common else min(bm25.values(), default=0.0)
    for i in keep:
        if i not in bm25 and in_text[i] == len(terms):
            bm25[i] = floor_b
    tag_score: dict[int, float] = {}
    for group in groups:  # each word (and the whole query): the best score of a label equal to it
        marks = ",".join("?" * len(group))
        for pid, best in db.execute(f"SELECT photo_id, MAX(score) FROM tags WHERE photo_id IN ({ids}) AND +label "
                                    f"COLLATE NOCASE IN ({marks}) AND score >= ? GROUP BY photo_id",
                                    (*group, params["floor"])):
            tag_score[pid] = tag_score.get(pid, 0.0) + best
    _add_narrower(db, exact, by_label, ids, params["floor"], tag_score, {label.lower() for label in labels})
    rows = db.execute(f"SELECT p.id, p.path, p.taken FROM photos p WHERE p.id IN ({ids}) AND {' AND '.join(where)}",
                      params).fetchall()
    scored = []
    for pid, path, taken in rows:
        b = bm25.get(pid) or 0.0
        scored.append((pid, path, taken, tag_score.get(pid, 0.0) + BM25_WEIGHT * b / (1 + b)))
    scored.sort(key=lambda r: (-r[3], r[1]))
    return scored, exhausted


def _exact_labels(word: str) -> list[str]:
    """The labels that count as the word itself: the word, and the shown name of the concept it most
    often means (`buildings`: building; `people`: person), as the shown rule stores its tags."""
    from tagcap.concepts import concepts

    vocab = concepts()
    names = [word] + [vocab.name(s) for s in vocab.lookup(word)[:1]]
    return list(dict.fromkeys(n.lower() for n in names))


def _add_narrower(db, exact: dict[str, list[str]], by_label: dict[str, set[int]], ids: str, floor: float,
                  tag_score: dict[int, float], excluded: set[str]) -> None:
    """Add to `tag_score`, for each word no label of a photo equals (`by_label`: the photos with a
    label that counts as the word, `exact`), NARROWER_WEIGHT times the best
    score of its chosen labels that the word names more broadly or by a synonym (`dog`: a `husky` tag;
    `airplane`: a `jet` tag), so a confident husky ranks with the dogs, below an exact `dog` tag."""
    from tagcap.concepts import concepts

    vocab = concepts()
    for term in exact:
        names = {vocab.name(s) for synset in vocab.lookup(term)[:3] for s in vocab.descendants(synset)}
        names = sorted(n for n in names if n.lower() not in excluded)[:MAX_NARROWER]
        if not names:
            continue
        marks = ",".join("?" * len(names))
        for pid, best in db.execute(f"SELECT photo_id, MAX(score) FROM tags WHERE photo_id IN ({ids}) AND chosen = 1 "
                                    f"AND +label COLLATE NOCASE IN ({marks}) AND score >= ? GROUP BY photo_id",
                                    (*names, floor)):
            if pid not in by_label[term]:
                tag_score[pid] = tag_score.get(pid, 0.0) + NARROWER_WEIGHT * best


def _text_matches(db, photos: set[int], terms: list[str]) -> dict[str, set[int]]:
    """Which of `photos` have each word in their text (labels and caption), by photo_text's own
    tokenizer: their rows are copied into a scratch FTS5 table in this connection's temporary
    database, where each word is one lookup in a few hundred rows. Asked of photo_text itself
    (`MATCH ? AND rowid IN (...)`), FTS5 seeks every listed row in the word's whole doclist: 7-25 ms
    a word for 200 photos of a million, against 3 ms for the copy (benchmarks/library.py synthetic)."""
    if not photos:
        return {t: set() for t in terms}
    db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.few_text USING fts5({TEXT_COLUMNS})")
    db.execute("DELETE FROM temp.few_text")
    db.execute("INSERT INTO temp.few_text(rowid, tags, caption) SELECT rowid, tags, caption FROM main.photo_text "
               f"WHERE rowid IN ({','.join(str(i) for i in photos)})")
    return {t: {r[0] for r in db.execute("SELECT rowid FROM temp.few_text WHERE few_text MATCH ?", (_fts_term(t),))}
            for t in terms}


def _fts_term(word: str) -> str:
    """One query word as an FTS5 expression: the word, or any word it also means (`children`: child;
    `kids`: child; `airplane`: airplane, which a `jet` photo's text holds). A photo's text holds its labels'
    concept words and those of the named concepts above them (`Library._refresh_text`), so a general
    word (`animal`, `vehicle`) finds the photos of everything under it."""
    from tagcap.concepts import concepts

    options = concepts().query_words(word)
    return "(" + " OR ".join(f'"{w}"' for w in options) + ")" if len(options) > 1 else f'"{word}"'



def _hit(library: Library, pid: int, path: str, taken: str | None, rel: float) -> Hit:
    tags = [{"label": label, "score": score, "source": name} for label, score, name in library.db.execute(
        "SELECT t.label, t.score, m.name FROM tags t JOIN models m ON m.id = t.model_id "
        "WHERE t.photo_id = ? AND t.chosen = 1 ORDER BY t.score DESC", (pid,))]
    caption = library.db.execute("SELECT text FROM captions WHERE photo_id = ? LIMIT 1", (pid,)).fetchone()
    return Hit(pid, path, round(float(rel or 0.0), 4), taken, caption[0] or None if caption else None, tags)


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
