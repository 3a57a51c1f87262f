"""Readers for the formats users bring, with bad records reported by file and line.

- pairs / triplets / pairs with k hard negatives: JSONL ({"anchor", "positive",
  "negatives": [...]} or "negative"), CSV or TSV with a header (anchor, positive, and
  negative or negative_1..negative_k);
- scored pairs (STS): CSV/TSV/JSONL with sentence1, sentence2, score;
- BEIR: corpus.jsonl ({_id, title, text}), queries.jsonl ({_id, text}),
  qrels/<split>.tsv (query-id, corpus-id, score, with a header).

`on_error`: "reject" stops at the first bad record with its file and line; "skip"
drops bad records and reports how many and where (the first few) in a warning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os

import numpy as np

from jaxembed.errors import ConfigError, DataError

POLICIES = ("reject", "skip")


class _Records:
  """Rows of a CSV/TSV/JSONL file as (line number, dict), decoding errors included."""

  def __init__(self, path: str, field: str):
    if not os.path.isfile(path):
      raise DataError(f"{field}={path!r}: no such file")
    self.path = path
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv", ".tsv"):
      raise DataError(f"{field}={path!r}: unknown format {ext!r}; use .jsonl, .csv or .tsv")
    self.ext = ext

  def __iter__(self):
    with open(self.path, "rb") as f:
      raw = f.read()
    if self.ext == ".jsonl":
      for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
          yield lineno, DataError(f"not UTF-8 ({e.reason} at byte {e.start})")
          continue
        except json.JSONDecodeError as e:
          yield lineno, DataError(f"not a JSON object ({e.msg})")
          continue
        yield lineno, rec if isinstance(rec, dict) else DataError("not a JSON object")
      return
    # CSV: RFC 4180 (a quoted field may hold the delimiter, quotes and newlines).
    # TSV: a tab separates fields and a newline ends a row; quotes are plain text.
    # A UTF-8 byte-order mark before the header is dropped.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    delimiter = "\t" if self.ext == ".tsv" else ","
    quoting = csv.QUOTE_NONE if self.ext == ".tsv" else csv.QUOTE_MINIMAL
    lines = raw.split(b"\n")
    # Lines that are not UTF-8 are reported and blanked (keeping the line numbers).
    text_lines, bad = [], {}
    for lineno, line in enumerate(lines, 1):
      try:
        text_lines.append(line.decode("utf-8"))
      except UnicodeDecodeError as e:
        bad[lineno] = DataError(f"not UTF-8 ({e.reason} at byte {e.start})")
        text_lines.append("")
    if 1 in bad or not text_lines[0].strip():
      yield 1, DataError("the first line must be a UTF-8 header row")
      return
    reader = csv.reader(io.StringIO("\n".join(text_lines), newline=""),
                        delimiter=delimiter, quoting=quoting, strict=self.ext == ".csv")
    header, first = None, 1
    while True:
      try:
        values = next(reader)
      except StopIteration:
        break
      except csv.Error as e:
        yield first, DataError(f"malformed {self.ext[1:].upper()} ({e})")
        return
      lineno, first = first, reader.line_num + 1
      for n in [n for n in bad if n < first]:
        yield n, bad.pop(n)
      if header is None:
        header = [h.strip() for h in values]
        continue
      if not any(v.strip() for v in values):
        continue
      if len(values) != len(header):
        yield lineno, DataError(f"{len(values)} columns where the header has {len(header)}")
        continue
      yield lineno, dict(zip(header, values))
    for n in sorted(bad):
      yield n, bad[n]


def _collect(path, field, on_error, parse):
  if on_error not in POLICIES:
    raise ConfigError(f"data.on_error={on_error!r}; valid values: {list(POLICIES)}")
  rows, bad = [], []
  for lineno, rec in _Records(path, field):
    try:
      if isinstance(rec, DataError):
        raise rec
      rows.append(parse(rec))
    except DataError as e:
      if on_error == "reject":
        raise DataError(f"{path}:{lineno}: {e} (set data.on_error='skip' to drop such "
                        "records)") from None
      bad.append(f"{path}:{lineno}: {e}")
  if bad:
    logging.warning("skipped %d bad records of %s, e.g. %s", len(bad), path, bad[:3])
  if not rows:
    raise DataError(f"{field}={path!r}: no usable records"
                    + (f" ({len(bad)} bad, e.g. {bad[0]})" if bad else ""))
  return rows, bad


def _text(rec, key):
  value = rec.get(key)
  if not isinstance(value, str) or not value.strip():
    raise DataError(f"field {key!r} is missing or empty")
  return value


PAIR_FIELDS = ("anchor", "positive", "negative", "negatives")


def parse_columns(spec: str, field: str = "data.columns") -> dict[str, str]:
  """'anchor=question,positive=answer' -> {'question': 'anchor', 'answer': 'positive'}
  (the file's column -> ours). Our names: anchor, positive, negative, negatives."""
  mapping = {}
  for part in filter(None, (p.strip() for p in (spec or "").split(","))):
    ours, eq, theirs = (x.strip() for x in part.partition("="))
    if not eq or not theirs:
      raise ConfigError(f"{field}={spec!r}: {part!r} is not <ours>=<column in the file>")
    if ours not in PAIR_FIELDS:
      raise ConfigError(f"{field}={spec!r}: {ours!r} is not one of {list(PAIR_FIELDS)}")
    mapping[theirs] = ours
  return mapping


def read_pairs(path: str, *, on_error: str = "reject", field: str = "data.train_file",
               columns: str = ""):
  """[{anchor, positive, negatives: [...]}] with the same number of negatives in every
  record (batches have one shape). `columns` names the file's columns for ours
  ('anchor=question,positive=answer', see `parse_columns`). Returns (rows, bad record
  messages)."""
  k = {}
  rename = parse_columns(columns)

  def parse(rec):
    if rename:
      rec = {rename.get(key, key): value for key, value in rec.items()}
    if "anchor" not in rec or "positive" not in rec:
      missing = [f for f in ("anchor", "positive") if f not in rec]
      raise DataError(f"no {missing} field (the record has {sorted(rec)[:8]}); name the "
                      "file's columns with data.columns='anchor=<column>,"
                      "positive=<column>'")
    if isinstance(rec.get("negatives"), list):
      negs = rec["negatives"]
    elif "negative" in rec:
      negs = [rec["negative"]]
    else:
      negs = [rec[c] for c in sorted((c for c in rec if c.startswith("negative_")),
                                     key=lambda c: int(c.split("_")[1]))]
    if not all(isinstance(n, str) and n.strip() for n in negs):
      raise DataError("negatives must be non-empty strings")
    k.setdefault("n", len(negs))
    if len(negs) != k["n"]:
      raise DataError(f"{len(negs)} negatives where earlier records have {k['n']}; "
                      "every record needs the same number")
    return {"anchor": _text(rec, "anchor"), "positive": _text(rec, "positive"),
            "negatives": negs}
  return _collect(path, field, on_error, parse)


def read_scored_pairs(path: str, *, on_error: str = "reject", field: str = "eval.sts_files"):
  """[(sentence1, sentence2, score)] from an STS-format file."""
  def parse(rec):
    try:
      score = float(rec.get("score"))
    except (TypeError, ValueError):
      raise DataError(f"score {rec.get('score')!r} is not a number") from None
    return (_text(rec, "sentence1"), _text(rec, "sentence2"), score)
  return _collect(path, field, on_error, parse)


def read_beir(folder: str, split: str, *, on_error: str = "reject",
              field: str = "data.beir_dir"):
  """(queries {qid: text}, corpus {docid: text}, qrels {qid: {docid: relevance}}) of
  the queries judged in qrels/<split>.tsv; a document's text is its title and text."""
  if not os.path.isdir(folder):
    raise DataError(f"{field}={folder!r}: no such folder (a BEIR folder holds "
                    "corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
  qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
  corpus_rows, _ = _collect(os.path.join(folder, "corpus.jsonl"), field, on_error,
                            lambda r: (str(r.get("_id", "")) or _text(r, "_id"),
                                       " ".join(filter(None, [r.get("title", ""),
                                                              _text(r, "text")]))))
  query_rows, _ = _collect(os.path.join(folder, "queries.jsonl"), field, on_error,
                           lambda r: (str(r.get("_id", "")) or _text(r, "_id"),
                                      _text(r, "text")))
  corpus, queries = dict(corpus_rows), dict(query_rows)

  def parse_qrel(rec):
    qid, did = rec.get("query-id", ""), rec.get("corpus-id", "")
    if qid not in queries or did not in corpus:
      raise DataError(f"query {qid!r} or document {did!r} is not in queries/corpus")
    try:
      return qid, did, int(float(rec.get("score")))
    except (TypeError, ValueError):
      raise DataError(f"score {rec.get('score')!r} is not a number") from None
  qrel_rows, _ = _collect(qrels_path, field, on_error, parse_qrel)
  qrels: dict[str, dict[str, int]] = {}
  for qid, did, score in qrel_rows:
    qrels.setdefault(qid, {})[did] = score
  return {q: queries[q] for q in qrels}, corpus, qrels


def read_jsonl_retrieval(folder: str, *, field: str = "--data"):
  """(queries [text], documents [text], relevance [Q, D] int32) of an MTEB-style
  folder of JSON lines: corpus.jsonl (_id, title, text), queries.jsonl (_id, text)
  and qrels.jsonl (query-id, corpus-id, score > 0 = relevant), in file order."""
  def rows(name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise DataError(f"{field}={folder!r}: no {name} (an MTEB-style folder holds "
                      "corpus.jsonl, queries.jsonl and qrels.jsonl)")
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  corpus, queries = rows("corpus.jsonl"), rows("queries.jsonl")
  doc_index = {d["_id"]: i for i, d in enumerate(corpus)}
  q_index = {q["_id"]: i for i, q in enumerate(queries)}
  rel = np.zeros((len(queries), len(corpus)), np.int32)
  for r in rows("qrels.jsonl"):
    if r.get("query-id") not in q_index or r.get("corpus-id") not in doc_index:
      raise DataError(f"{folder}/qrels.jsonl: query {r.get('query-id')!r} or document "
                      f"{r.get('corpus-id')!r} is not in queries/corpus")
    if float(r.get("score", 0)) > 0:
      rel[q_index[r["query-id"]], doc_index[r["corpus-id"]]] = 1
  docs = [" ".join(filter(None, [d.get("title", ""), d.get("text", "")])) for d in corpus]
  return [q["text"] for q in queries], docs, rel
