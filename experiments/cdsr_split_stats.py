#!/usr/bin/env python
"""Why validation and test scores differ on an LLM4CDSR-format domain pair: target popularity and history length of
the validation and test users, per target domain (a Markdown table).

    python experiments/cdsr_split_stats.py ../shared/data/llmcdsr/food-kitchen

Reads ``train_overlap.txt``, ``train_A.txt``, ``train_B.txt`` (the training interactions), ``valid.txt`` and
``test.txt`` (``user<TAB>id,id,...``, the last id is the target) and ``num.txt`` (the X item count: ids below it are
domain X). Popularity = the number of training interactions with the target item; sampled-negative MRR rewards
popular targets, so a split whose targets are rarer scores lower with the same model. ``pop_mrr`` makes that concrete:
the MRR of a history-blind most-popular scorer (training popularity, ties counted half) ranking each target among
999 negatives drawn uniformly (seeded, without the target) from its domain's items.
"""

from __future__ import annotations

import argparse
import collections
import pathlib

import numpy as np


def read_sequences(path: pathlib.Path) -> list[list[int]]:
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1]:
                raise ValueError(f"{path}:{lineno}: expected 'user<TAB>id,id,...', got {line[:80]!r}")
            try:
                out.append([int(x) for x in parts[1].split(",")])
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: item ids must be integers ({e})") from None
    return out


def split_stats(root: pathlib.Path, num_negatives: int = 999, seed: int = 0) -> list[dict]:
    nums = [int(x) for x in (root / "num.txt").read_text().split()]
    num_x, num_y = nums[0], nums[1]
    rng = np.random.default_rng(seed)
    pop: collections.Counter = collections.Counter()
    for name in ("train_overlap.txt", "train_A.txt", "train_B.txt"):
        for seq in read_sequences(root / name):
            pop.update(seq)
    rows = []
    for split in ("valid", "test"):
        seqs = read_sequences(root / f"{split}.txt")
        for dom in ("X", "Y"):
            in_dom = (lambda i: i < num_x) if dom == "X" else (lambda i: i >= num_x)
            sel = [s for s in seqs if in_dom(s[-1])]
            p = np.array([pop[s[-1]] for s in sel], float)
            hist = np.array([len(s) - 1 for s in sel], float)
            same = np.array([sum(in_dom(i) for i in s[:-1]) for s in sel], float)
            lo, hi = (0, num_x) if dom == "X" else (num_x, num_x + num_y)
            rr = []
            for s in sel:
                neg = rng.integers(lo, hi - 1, size=num_negatives)
                neg = neg + (neg >= s[-1])  # never the target itself
                pn = np.array([pop[int(i)] for i in neg])
                pt = pop[s[-1]]
                rr.append(1.0 / (1 + (pn > pt).sum() + 0.5 * (pn == pt).sum()))
            rows.append(dict(split=split, domain=dom, users=len(sel), pop_median=float(np.median(p)),
                             pop_mean=float(p.mean()), unseen=float((p == 0).mean()),
                             hist_median=float(np.median(hist)), same_domain_hist_median=float(np.median(same)),
                             pop_mrr=float(np.mean(rr))))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=pathlib.Path, help="an LLM4CDSR domain-pair directory")
    a = ap.parse_args(argv)
    rows = split_stats(a.root)
    print("| split | target domain | users | target popularity median | mean | unseen in training | history median "
          "| same-domain history median | most-popular MRR (999 neg.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {r['domain']} | {r['users']} | {r['pop_median']:.0f} | {r['pop_mean']:.1f} | "
              f"{100 * r['unseen']:.1f}% | {r['hist_median']:.0f} | {r['same_domain_hist_median']:.0f} | "
              f"{r['pop_mrr']:.4f} |")


if __name__ == "__main__":
    main()
