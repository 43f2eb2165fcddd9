#!/usr/bin/env python
"""Most-popular retrieval baseline on KuaiRand-1K windows (kuairand1k_autocdsr; needs ../shared/data): the
history-blind reference for the KuaiFormer HR@K table.

    python experiments/kuairand1k_popularity.py
    python experiments/kuairand1k_popularity.py --data kuairand_embedded --ks 10 50 100   # the packaged clicks
    python experiments/kuairand1k_popularity.py --min_count 10 --positions 4   # the ``frequent`` protocol
    python experiments/kuairand1k_popularity.py --data movielens-100k/seq --ks 10 50 100 --exclude_history   # ``ml100k``

Scores every item of KuaiFormer's vocabulary (the ids that occur in the training windows) by its number of
training occurrences (history and target, as ``jaxrec.models.kuaiformer.ItemVocab`` counts them) and ranks the
last view of each validation / test window (the KuaiFormer task's HR protocol) over that catalogue. Ties are broken
at random in expectation: with ``g`` items more popular than the target and ``e`` others as popular, HR@K =
``clip((K - g) / (e + 1), 0, 1)``. A target outside the training vocabulary (OOV) is a miss, as in the task.

Also printed, to show how much sequential signal there is to learn: the catalogue size and mean training occurrences
per item, the share of held-out targets already in the user's history, and a second history-aware baseline --
**last-item transitions**: items ranked by how often they followed the history's last item in the training
sequences, the rest after them by popularity (ties by id; deterministic).
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxrec.data.builders.kuairand1k import read_kuairand1k

KS = (50, 100, 500, 1000)
CATALOG_DATA = ("movielens-100k/seq",)
DATA = ("kuairand1k", "kuairand_embedded", *CATALOG_DATA)


def popularity_hr(train_ids: np.ndarray, targets: np.ndarray, ks=KS, min_count: int = 1,
                  exclude: list | None = None) -> dict:
    """HR@k of the most-popular ranker; ``train_ids`` every training occurrence, ``targets`` the held-out ids;
    the catalogue is the ids with at least ``min_count`` training occurrences (the task's ``min_item_count``).
    ``exclude``: per target, the ids taken out of its ranking (its history; the target itself never is)."""
    train_ids = np.asarray(train_ids, np.int64)
    train_ids = train_ids[train_ids > 0]
    counts = np.bincount(train_ids, minlength=int(max(train_ids.max(), np.max(targets))) + 1)
    counts[counts < max(int(min_count), 1)] = 0
    catalogue = np.sort(counts[counts > 0])  # counts of the vocabulary items, ascending
    out = {"targets": int(len(targets)), "catalogue": int(catalogue.size)}
    c = counts[np.asarray(targets, np.int64)]
    in_vocab = c > 0
    greater = catalogue.size - np.searchsorted(catalogue, c, side="right")
    equal = np.searchsorted(catalogue, c, side="right") - np.searchsorted(catalogue, c, side="left") - 1
    equal = np.maximum(equal, 0)  # an OOV target (count 0) is not in the catalogue: no tie group (and a miss)
    if exclude is not None:
        for b, (h, y) in enumerate(zip(exclude, np.asarray(targets, np.int64))):
            hc = counts[np.asarray([x for x in set(np.asarray(h, np.int64).tolist()) if x != y and 0 < x < len(counts)],
                                   np.int64)]
            hc = hc[hc > 0]
            greater[b] -= int(np.sum(hc > c[b]))
            equal[b] -= int(np.sum(hc == c[b])) if in_vocab[b] else 0
    out["target_in_vocab"] = float(in_vocab.mean())
    for k in ks:
        p = np.clip((k - greater) / (equal + 1.0), 0.0, 1.0) * in_vocab
        out[f"hr@{k}"] = float(p.mean())
    return out


def transition_model(train_seqs) -> tuple[dict, dict, list]:
    """``(transition counts {a: Counter(b)}, item counts, items by descending count then id)`` of whole training
    sequences; built once and shared by every held-out split."""
    import collections

    trans: dict = collections.defaultdict(collections.Counter)
    for seq in train_seqs:
        for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):
            trans[a][b] += 1
    counts = collections.Counter(np.concatenate(train_seqs).tolist())
    by_pop = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return trans, counts, by_pop


def transition_hr(model, histories, targets, ks=KS, min_count: int = 1, exclude_history: bool = False) -> dict:
    """HR@k of the last-item-transition ranker (module docstring); ``model`` from :func:`transition_model`;
    only ids with at least ``min_count`` training occurrences are ranked; ``exclude_history`` skips the
    history's items (other than the target)."""
    trans, counts, by_pop = model
    if min_count > 1:
        by_pop = [i for i in by_pop if counts[i] >= min_count]
    kmax = max(ks)
    hits = {k: 0 for k in ks}
    for h, y in zip(histories, targets):
        succ = sorted(((b, c) for b, c in trans[int(h[-1])].items() if counts[b] >= min_count),
                      key=lambda kv: (-kv[1], -counts[kv[0]], kv[0])) if len(h) else []
        banned = set(h.tolist()) - {int(y)} if exclude_history else set()
        ranked = [i for i, _ in succ if i not in banned][:kmax]
        seen = set(ranked) | banned
        for i in by_pop:
            if len(ranked) >= kmax:
                break
            if i not in seen:
                ranked.append(i)
        pos = ranked.index(int(y)) if int(y) in ranked else kmax
        for k in ks:
            hits[k] += pos < k
    n = max(len(targets), 1)
    return {f"hr@{k}": hits[k] / n for k in ks}


def load_sequences(data: str, raw_dir=None) -> tuple[list, dict]:
    """``(training sequences, {split: (histories, targets)})`` of ``kuairand1k``, ``kuairand_embedded`` or a
    catalogue sequence dataset (``CATALOG_DATA``)
    (a training sequence is a whole record ``items + [target]``)."""
    if data == "kuairand1k":
        d = read_kuairand1k(raw_dir)

        def rows(t):
            o = t.offsets
            return [t.items[o[i]:o[i + 1]] for i in range(len(o) - 1)]

        tr = d.tables["train"]
        train = [np.append(h, y) for h, y in zip(rows(tr), tr.target)]
        return train, {s: (rows(d.tables[s]), d.tables[s].target) for s in ("valid", "test")}
    if data == "kuairand_embedded":
        from jaxrec.data.builders import embedded

        ev = embedded.read_events(raw_dir)
        train = [np.append(r["items"], r["target"]).astype(np.int64) for r in embedded.split_records(ev, "train")]
        held = {}
        for s in ("valid", "test"):
            recs = list(embedded.split_records(ev, s))
            held[s] = ([np.asarray(r["items"], np.int64) for r in recs], np.array([r["target"] for r in recs]))
        return train, held
    if data in CATALOG_DATA:  # any prepared sequence dataset of the catalogue (records = items + target)
        from jaxrec.data import catalog

        def recs(split):
            src = catalog.load(data, split, raw_dir=raw_dir)
            return [src[i] for i in range(len(src))]

        train = [np.append(r["items"], r["target"]).astype(np.int64) for r in recs("train")]
        held = {}
        for s in ("valid", "test"):
            rr = recs(s)
            held[s] = ([np.asarray(r["items"], np.int64) for r in rr], np.array([int(r["target"]) for r in rr]))
        return train, held
    raise ValueError(f"--data: expected one of {DATA}, got {data!r}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="kuairand1k", choices=DATA)
    ap.add_argument("--raw_dir", default=None, help="the data folder (default: ../shared/data or the package)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS))
    ap.add_argument("--min_count", type=int, default=1,
                    help="catalogue = ids with at least this many training occurrences (task.min_item_count)")
    ap.add_argument("--positions", type=int, default=1,
                    help="held-out events per record, as eval.positions (jaxrec.models.kuaiformer.HeldOutPositions)")
    ap.add_argument("--exclude_history", action="store_true",
                    help="take each user's other history items out of the ranking (eval.exclude_history)")
    a = ap.parse_args(argv)
    train, held = load_sequences(a.data, a.raw_dir)
    if a.positions > 1:
        from jaxrec.models.kuaiformer import HeldOutPositions

        for s, (hist, tgt) in list(held.items()):
            src = HeldOutPositions([{"items": np.asarray(h), "target": int(y)} for h, y in zip(hist, tgt)],
                                   a.positions, s)
            recs = [src[i] for i in range(len(src))]
            held[s] = ([np.asarray(r["items"], np.int64) for r in recs], np.array([r["target"] for r in recs]))
    train_ids = np.concatenate(train)
    n_items = np.unique(train_ids[train_ids > 0]).size
    print(f"{a.data}: {len(train)} training sequences, {train_ids.size} occurrences of {n_items} items "
          f"({train_ids.size / n_items:.2f} per item)")
    res, model = {}, transition_model(train)
    print("| split | ranker | targets | in vocabulary | target in history | "
          + " | ".join(f"HR@{k}" for k in a.ks) + " |")
    print("|---|---|---|---|---|" + "---|" * len(a.ks))
    for s, (hist, tgt) in held.items():
        p = popularity_hr(train_ids, tgt, a.ks, a.min_count, hist if a.exclude_history else None)
        t = transition_hr(model, hist, tgt, a.ks, a.min_count, a.exclude_history)
        in_hist = float(np.mean([int(y) in set(h.tolist()) for h, y in zip(hist, tgt)]))
        res[s] = {"popularity": p, "transition": t, "target_in_history": in_hist}
        for name, r in (("most popular", p), ("last-item transitions", t)):
            print(f"| {s} | {name} | {p['targets']} | {100 * p['target_in_vocab']:.1f}% | {100 * in_hist:.1f}% | "
                  + " | ".join(f"{r[f'hr@{k}']:.4f}" for k in a.ks) + " |")
    return res


if __name__ == "__main__":
    main()
