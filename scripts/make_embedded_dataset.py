#!/usr/bin/env python
"""Make jaxrec's embedded default dataset (``kuairand_embedded``) from KuaiRand-Pure. Deterministic.

    python scripts/make_embedded_dataset.py                  # writes jaxrec/data/embedded/
    python scripts/make_embedded_dataset.py --check          # rebuild in a temp dir, compare byte for byte

Input: ``../shared/data/kuairand_pure/derived/log_standard_4_25_to_5_08_pure.csv`` (KuaiRand-Pure standard
log, 2022-04-25..05-08, sorted by user_id, time_ms, video_id; its sha256 is checked) and
``KuaiRand-Pure/LICENSE``.

Steps:
  1. positives: rows with ``is_click == 1`` (every other feedback column is ignored);
  2. order each user's positives by (time_ms, video_id) (ties in time_ms broken by video id);
  3. repeat clicks: keep the first click of each (user, video), drop later ones;
  4. keep users with >= 5 distinct clicked videos (leave-one-out needs 2 training items + valid + test);
  5. remap videos to dense ids 1..V (ascending KuaiRand video_id) and users to 0..U-1 (ascending
     KuaiRand user_id) with the maps stored; timestamps to unix seconds (time_ms // 1000); keep ``tab``.
Outputs (gzip with mtime 0, so reruns are byte-identical): the events, the two id maps, metadata.json,
README.md (statistics filled in) and LICENSE (copied unchanged).
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import gzip
import hashlib
import io
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np

from jaxrec.data import paths
from jaxrec.data.builders import embedded as emb
from jaxrec.data.errors import DataError

SOURCE_REL = "kuairand_pure/derived/log_standard_4_25_to_5_08_pure.csv"
LICENSE_REL = "kuairand_pure/KuaiRand-Pure/LICENSE"
SOURCE_SHA256 = "12990247677614badd52f0a66d7023ffbc5b51be9fffe1ceb5540a071a4f0880"
LICENSE_SHA256 = "187442db4df3afd21f2f0525739fd4beac28a62daaba3ee8d3533f60e7c33ec7"
LOG_COLUMNS = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
               "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"
               ).split(",")
POSITIVE = "is_click == 1"


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_log(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The needed columns of the KuaiRand log, strictly parsed (DataError names file, line, field)."""
    need = ("user_id", "video_id", "time_ms", "is_click", "tab")
    cols = {k: [] for k in need}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != LOG_COLUMNS:
            raise DataError(path, "bad header", line=1, expected=",".join(LOG_COLUMNS), got=header)
        idx = {k: LOG_COLUMNS.index(k) for k in need}
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(LOG_COLUMNS):
                raise DataError(path, "wrong number of fields", line=line_no, expected=f"{len(LOG_COLUMNS)}", got=row)
            for k, i in idx.items():
                try:
                    cols[k].append(int(row[i]))
                except ValueError:
                    raise DataError(path, "not an integer", line=line_no, field=k, got=row[i]) from None
    out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    if not np.isin(out["is_click"], (0, 1)).all():
        raise DataError(path, "bad label", field="is_click", expected="0 or 1")
    return out


def write_csv_gz(path: pathlib.Path, header: tuple[str, ...], columns: list[np.ndarray]) -> None:
    buf = io.StringIO()
    buf.write(",".join(header) + "\n")
    for row in zip(*(c.tolist() for c in columns)):
        buf.write(",".join(map(str, row)) + "\n")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue().encode("utf-8"))


def build(source: pathlib.Path, license_file: pathlib.Path, out: pathlib.Path, min_len: int = emb.MIN_SEQ_LEN) -> dict:
    src_sha = sha256(source)
    if src_sha != SOURCE_SHA256:
        raise DataError(source, "checksum mismatch", expected=f"sha256 {SOURCE_SHA256} (SOURCE.md)", got=src_sha)
    if sha256(license_file) != LICENSE_SHA256:
        raise DataError(license_file, "checksum mismatch", expected=f"sha256 {LICENSE_SHA256}")
    log = read_log(source)
    n_rows = int(log["user_id"].size)
    all_users = np.unique(log["user_id"])

    pos = log["is_click"] == 1
    u, v, t, tab = (log[k][pos] for k in ("user_id", "video_id", "time_ms", "tab"))
    order = np.lexsort((v, t, u))  # user, then time, then video id
    u, v, t, tab = u[order], v[order], t[order], tab[order]
    n_pos = int(u.size)

    # first click of each (user, video): np.unique returns the first index in sorted order.
    pair = u * (int(v.max()) + 1) + v
    _, first = np.unique(pair, return_index=True)
    keep = np.zeros(u.size, bool)
    keep[first] = True
    n_repeat = int((~keep).sum())
    u, v, t, tab = u[keep], v[keep], t[keep], tab[keep]

    users_pos, counts = np.unique(u, return_counts=True)
    kept_users = users_pos[counts >= min_len]
    short_users = users_pos[counts < min_len]
    m = np.isin(u, kept_users)
    n_short_events = int((~m).sum())
    u, v, t, tab = u[m], v[m], t[m], tab[m]

    videos = np.unique(v)
    users = kept_users
    item_id = np.searchsorted(videos, v) + 1
    user_id = np.searchsorted(users, u)

    out.mkdir(parents=True, exist_ok=True)
    write_csv_gz(out / emb.EVENTS_FILE, emb.EVENT_COLUMNS, [user_id, item_id, tab, t // 1000])
    write_csv_gz(out / emb.ITEM_MAP_FILE, ("item_id", "video_id"), [np.arange(1, videos.size + 1), videos])
    write_csv_gz(out / emb.USER_MAP_FILE, ("user_id", "kuairand_user_id"), [np.arange(users.size), users])
    shutil.copyfile(license_file, out / "LICENSE")

    events = emb.read_events(out)  # validates what was written
    stats = emb.compute_stats(events)
    tabs, tab_counts = np.unique(events.tab, return_counts=True)
    meta = {
        "name": emb.NAME,
        "source": {
            "dataset": "KuaiRand-Pure (Gao et al., CIKM 2022), https://kuairand.com",
            "file": SOURCE_REL,
            "sha256": src_sha,
            "rows": n_rows,
            "users": int(all_users.size),
            "period": "2022-04-25..2022-05-08 (standard log, is_rand = 0)",
            "licence": "CC BY-SA 4.0",
        },
        "positive_definition": POSITIVE,
        "ordering": "per user by (time_ms, video_id)",
        "filtering": {
            "positive_rows": n_pos,
            "repeat_clicks_removed": n_repeat,
            "users_without_positive": int(all_users.size - users_pos.size),
            "users_with_positives": int(users_pos.size),
            f"users_dropped_fewer_than_{min_len}_positives": int(short_users.size),
            f"events_dropped_with_those_users": n_short_events,
            "users_kept": int(users.size),
            "min_positives_per_user": min_len,
        },
        "stats": stats,
        "tab_counts": {str(int(k)): int(c) for k, c in zip(tabs, tab_counts)},
        "timestamp_unit": "unix seconds (time_ms // 1000)",
        "split_protocol": "leave-one-out: train target s[n-3] with items s[:n-3]; valid target s[n-2]; test target s[n-1]",
        "files": {name: sha256(out / name) for name in
                  (emb.EVENTS_FILE, emb.ITEM_MAP_FILE, emb.USER_MAP_FILE, "LICENSE")},
    }
    (out / emb.METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(readme(meta))
    return meta


def readme(meta: dict) -> str:
    s, f, src = meta["stats"], meta["filtering"], meta["source"]
    k = f["min_positives_per_user"]
    return f"""# kuairand_embedded: jaxrec's embedded default dataset

A small sequential-recommendation dataset shipped inside the package, so the Quickstart and the default
tests run on a fresh clone. Load it with `jaxrec.data.catalog.load("kuairand_embedded", split)`
(splits `train`, `valid`, `test`).

## Source and attribution

Derived from **KuaiRand-Pure** (https://kuairand.com, https://github.com/chongminggao/KuaiRand), licensed
under **CC BY-SA 4.0** (the licence text is in `LICENSE`, copied unchanged). Please cite:

> Chongming Gao, Shijun Li, Yuan Zhang, Jiawei Chen, Biao Li, Wenqiang Lei, Peng Jiang and Xiangnan He.
> 2022. KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed Videos. In
> Proceedings of the 31st ACM International Conference on Information and Knowledge Management (CIKM '22),
> pages 3953-3957. https://doi.org/10.1145/3511808.3557624

Input file: the standard (non-random) KuaiRand-Pure log of 2022-04-25..2022-05-08
(`{src['file']}`, {src['rows']:,} impressions of {src['users']:,} users, sha256 `{src['sha256'][:16]}...`),
i.e. the rows of the official `log_standard_4_22_to_5_08_pure.csv` for those dates.

**This derived dataset is licensed under CC BY-SA 4.0** as well (ShareAlike). Changes made to the original:
it was filtered, re-ordered and re-numbered as listed below, and every column other than user, video,
time and tab was dropped.

## What was changed (scripts/make_embedded_dataset.py, deterministic)

1. **Positive** = `{meta['positive_definition']}` ({f['positive_rows']:,} of {src['rows']:,} impressions). All other feedback is ignored.
2. Each user's positives are ordered by `(time_ms, video_id)`.
3. Repeat clicks on the same video by the same user: the first is kept; **{f['repeat_clicks_removed']:,} later clicks removed**.
4. Users: {src['users']:,} in the log; **{f['users_without_positive']:,} dropped with no click at all**;
   **{f[f'users_dropped_fewer_than_{k}_positives']:,} dropped with fewer than {k} distinct clicked videos**
   ({f['events_dropped_with_those_users']:,} positives), because leave-one-out needs at least 2 training items plus a
   validation and a test item; **{f['users_kept']:,} users kept**.
5. Ids: videos renumbered densely to `item_id` 1..{s['items']} by ascending KuaiRand `video_id` (0 is padding),
   users to `user_id` 0..{s['users'] - 1} by ascending KuaiRand `user_id`; the maps are `item_map.csv.gz`
   (`item_id,video_id`) and `user_map.csv.gz` (`user_id,kuairand_user_id`).
6. `timestamp` = `time_ms // 1000` (unix seconds). `tab` (KuaiRand's scenario/page id, 0..14) kept per event as side information.

## Statistics

| users | items | interactions | density | sequence length min / median / mean / max |
|---|---|---|---|---|
| {s['users']:,} | {s['items']:,} | {s['interactions']:,} | {s['density']} | {s['seq_len_min']} / {s['seq_len_median']:g} / {s['seq_len_mean']} / {s['seq_len_max']} |

Positives per tab: {', '.join(f'{t}: {c:,}' for t, c in sorted(meta['tab_counts'].items(), key=lambda kv: -kv[1]))}.

## Splits (leave-one-out, SASRec protocol)

One record per user in each split ({s['users']:,} records each). For a user's sequence `s` of length `n`:
`train` has `items = s[:n-3]`, `target = s[n-3]` (train on `s[:n-2]`, {s['train_interactions']:,} interactions in all);
`valid` has `items = s[:n-2]`, `target = s[n-2]`; `test` has `items = s[:n-1]`, `target = s[n-1]`.
Records follow the catalogue's sequence schema (single domain: `domains` = 0, `overlap` = False) plus
`tabs` [n] and `target_tab`.

## Files

| file | content |
|---|---|
| `{emb.EVENTS_FILE}` | `user_id,item_id,tab,timestamp`, one row per positive, sorted by user then time |
| `{emb.ITEM_MAP_FILE}` | `item_id,video_id` |
| `{emb.USER_MAP_FILE}` | `user_id,kuairand_user_id` |
| `metadata.json` | all figures above, the positive definition, and sha256 of the source and of every file |
| `LICENSE` | CC BY-SA 4.0 licence text of KuaiRand |
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default=None, help="raw-data root (default: $JAXREC_RAW_DATA or ../shared/data)")
    ap.add_argument("--out", default=str(emb.PACKAGE_DIR))
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with --out")
    args = ap.parse_args(argv)
    root = paths.raw_dir(args.data_dir)
    source, lic = root / SOURCE_REL, root / LICENSE_REL
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(source, lic, pathlib.Path(tmp))
            names = [emb.EVENTS_FILE, emb.ITEM_MAP_FILE, emb.USER_MAP_FILE, emb.METADATA_FILE, "README.md", "LICENSE"]
            _, mismatch, errors = filecmp.cmpfiles(tmp, args.out, names, shallow=False)
            if mismatch or errors:
                print(f"differ: {mismatch + errors}", file=sys.stderr)
                return 1
        print("embedded dataset is up to date")
        return 0
    meta = build(source, lic, pathlib.Path(args.out))
    print(json.dumps({"stats": meta["stats"], "filtering": meta["filtering"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
