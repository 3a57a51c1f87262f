"""Writes a small "own data" example in the formats users bring, from real text that
is installed offline: 200 (question, answer) pairs from WordNet nouns ("what is a
<lemma>?" -> its gloss; the system's wordnet-base) and an STS file of SimLex-999 word
pairs with their human scores (gensim's test data).

  python examples/make_own_data.py --out=my_data
  -> my_data/pairs.jsonl (columns question, answer), my_data/sts.csv
"""

import argparse
import csv
import json
import os

from gensim.test.utils import datapath


def wordnet_pairs(path: str, n: int) -> list[dict]:
  pairs = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.startswith("  ") or "|" not in line:
        continue                                # the licence header
      head, gloss = line.split("|", 1)
      fields = head.split()
      lemma = fields[4].replace("_", " ")
      definition = gloss.split(";")[0].strip()
      if len(definition.split()) >= 4 and lemma.isascii():
        pairs.append({"question": f"what is a {lemma}?", "answer": definition})
  step = max(len(pairs) // n, 1)                # spread over the file
  return pairs[::step][:n]


def simlex_rows(n: int) -> list[tuple[str, str, float]]:
  rows = []
  with open(datapath("simlex999.txt"), encoding="utf-8") as f:
    for line in f:
      if line.startswith("#") or not line.strip():
        continue                                # comment lines, the header
      w1, w2, score = line.rstrip("\n").split("\t")[:3]
      rows.append((w1, w2, float(score)))
  return rows[:n]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--wordnet", default="/usr/share/wordnet/data.noun")
  parser.add_argument("--pairs", type=int, default=200)
  parser.add_argument("--sts", type=int, default=300)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "pairs.jsonl"), "w", encoding="utf-8") as f:
    for p in wordnet_pairs(args.wordnet, args.pairs):
      f.write(json.dumps(p) + "\n")
  with open(os.path.join(args.out, "sts.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["sentence1", "sentence2", "score"])
    w.writerows(simlex_rows(args.sts))
  print(f"wrote {args.out}/pairs.jsonl ({args.pairs} pairs) and {args.out}/sts.csv")


if __name__ == "__main__":
  main()
