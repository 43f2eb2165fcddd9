#!/usr/bin/env python
"""Why validation and test scores differ on an LLM4CDSR-format domain pair: target popularity and history length of
the validation and test users, per target domain (a Markdown table).

    python experiments/cdsr_split_stats.py                          # ../shared/data/llmcdsr/food-kitchen
    python experiments/cdsr_split_stats.py --config llmcdsr_movie_book

Reads the pair with the catalogue's strict reader (``jaxrec.data.builders.cross_domain_seq.read_config``: checksums,
id ranges, line counts). Popularity = the number of training interactions (``train_A`` + ``train_B`` +
``train_overlap``, history and target) with the target item; sampled-negative MRR rewards popular targets, so a
split whose targets are rarer scores lower with the same model. ``pop_mrr`` makes that concrete: the MRR of a
history-blind most-popular scorer (training popularity, ties counted half) ranking each target among 999
negatives drawn uniformly (seeded, without the target) from its domain's items.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxrec.data.builders.cross_domain_seq import CrossDomainData, read_config


def split_stats(data: CrossDomainData, num_negatives: int = 999, seed: int = 0) -> list[dict]:
    """One row per (split in valid/test, target domain) of a pair read by ``read_config``."""
    rng = np.random.default_rng(seed)
    tr = data.tables["train"]
    pop = np.bincount(np.concatenate([tr.items, tr.target]), minlength=data.num_items + 1)
    rows = []
    for split in ("valid", "test"):
        t = data.tables[split]
        for d, name in enumerate(data.domain_names):
            lo, hi = data.domain_item_ranges[name]  # inclusive ids
            rr, hist, same, tgt = [], [], [], []
            for i in np.flatnonzero(t.target_domain == d):
                y = int(t.target[i])
                h_dom = t.domains[t.offsets[i]:t.offsets[i + 1]]
                hist.append(h_dom.size)
                same.append(int((h_dom == d).sum()))
                tgt.append(y)
                neg = rng.integers(lo, hi, size=num_negatives)
                neg = neg + (neg >= y)  # never the target itself
                pn, pt = pop[neg], pop[y]
                rr.append(1.0 / (1 + (pn > pt).sum() + 0.5 * (pn == pt).sum()))
            p = pop[np.asarray(tgt, np.int64)].astype(float)
            rows.append(dict(split=split, domain="XY"[d] if len(data.domain_names) == 2 else name, users=len(tgt),
                             pop_median=float(np.median(p)), pop_mean=float(p.mean()), unseen=float((p == 0).mean()),
                             hist_median=float(np.median(hist)), same_domain_hist_median=float(np.median(same)),
                             pop_mrr=float(np.mean(rr))))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="llmcdsr_food_kitchen", help="an LLMCDSR pair config of cross_domain_seq")
    ap.add_argument("--raw_dir", default=None, help="the pair's folder (default: under ../shared/data)")
    a = ap.parse_args(argv)
    rows = split_stats(read_config(a.config, a.raw_dir))
    print("| split | target domain | users | target popularity median | mean | unseen in training | history median "
          "| same-domain history median | most-popular MRR (999 neg.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {r['domain']} | {r['users']} | {r['pop_median']:.0f} | {r['pop_mean']:.1f} | "
              f"{100 * r['unseen']:.1f}% | {r['hist_median']:.0f} | {r['same_domain_hist_median']:.0f} | "
              f"{r['pop_mrr']:.4f} |")


if __name__ == "__main__":
    main()
