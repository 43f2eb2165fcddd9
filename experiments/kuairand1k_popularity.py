#!/usr/bin/env python
"""Most-popular retrieval baseline on KuaiRand-1K windows (kuairand1k_autocdsr; needs ../shared/data): the
history-blind reference for the KuaiFormer HR@K table.

    python experiments/kuairand1k_popularity.py
    python experiments/kuairand1k_popularity.py --data kuairand_embedded --ks 10 50 100   # the packaged clicks

Scores every item of KuaiFormer's vocabulary (the ids that occur in the training windows) by its number of
training occurrences (history and target, as ``jaxrec.models.kuaiformer.ItemVocab`` counts them) and ranks the
last view of each validation / test window (the KuaiFormer task's HR protocol) over that catalogue. Ties are broken
at random in expectation: with ``g`` items more popular than the target and ``e`` others as popular, HR@K =
``clip((K - g) / (e + 1), 0, 1)``. A target outside the training vocabulary (OOV) is a miss, as in the task.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxrec.data.builders.kuairand1k import read_kuairand1k

KS = (50, 100, 500, 1000)


def popularity_hr(train_ids: np.ndarray, targets: np.ndarray, ks=KS) -> dict:
    """HR@k of the most-popular ranker; ``train_ids`` every training occurrence, ``targets`` the held-out ids."""
    train_ids = np.asarray(train_ids, np.int64)
    train_ids = train_ids[train_ids > 0]
    counts = np.bincount(train_ids, minlength=int(max(train_ids.max(), np.max(targets))) + 1)
    catalogue = np.sort(counts[counts > 0])  # counts of the vocabulary items, ascending
    out = {"targets": int(len(targets)), "catalogue": int(catalogue.size)}
    c = counts[np.asarray(targets, np.int64)]
    in_vocab = c > 0
    greater = catalogue.size - np.searchsorted(catalogue, c, side="right")
    equal = np.searchsorted(catalogue, c, side="right") - np.searchsorted(catalogue, c, side="left") - 1
    equal = np.maximum(equal, 0)  # an OOV target (count 0) is not in the catalogue: no tie group (and a miss)
    out["target_in_vocab"] = float(in_vocab.mean())
    for k in ks:
        p = np.clip((k - greater) / (equal + 1.0), 0.0, 1.0) * in_vocab
        out[f"hr@{k}"] = float(p.mean())
    return out


def load_ids(data: str, raw_dir=None) -> tuple[np.ndarray, dict]:
    """``(training occurrences, {split: held-out targets})`` of ``kuairand1k`` or ``kuairand_embedded``."""
    if data == "kuairand1k":
        d = read_kuairand1k(raw_dir)
        tr = d.tables["train"]
        return np.concatenate([tr.items, tr.target]), {s: d.tables[s].target for s in ("valid", "test")}
    if data == "kuairand_embedded":
        from jaxrec.data.builders import embedded

        ev = embedded.read_events(raw_dir)
        recs = list(embedded.split_records(ev, "train"))
        train = np.concatenate([np.append(r["items"], r["target"]) for r in recs])
        held = {s: np.array([r["target"] for r in embedded.split_records(ev, s)]) for s in ("valid", "test")}
        return train, held
    raise ValueError(f"--data: expected kuairand1k or kuairand_embedded, got {data!r}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="kuairand1k", choices=("kuairand1k", "kuairand_embedded"))
    ap.add_argument("--raw_dir", default=None, help="the data folder (default: ../shared/data or the package)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS))
    a = ap.parse_args(argv)
    train_ids, held = load_ids(a.data, a.raw_dir)
    res = {s: popularity_hr(train_ids, t, a.ks) for s, t in held.items()}
    print("| split | targets | in vocabulary | " + " | ".join(f"HR@{k}" for k in a.ks) + " |")
    print("|---|---|---|" + "---|" * len(a.ks))
    for s, r in res.items():
        print(f"| {s} | {r['targets']} | {100 * r['target_in_vocab']:.1f}% | "
              + " | ".join(f"{r[f'hr@{k}']:.4f}" for k in a.ks) + " |")
    return res


if __name__ == "__main__":
    main()
