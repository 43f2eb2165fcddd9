"""UniCDR-style user-item cross-domain datasets: ``disencdr/*``, ``cdrib/*`` and ``douban_gadtcdr``.

Three raw layouts, one record schema (one record per interaction; numpy dict from the data source):

``user_id``   int64 scalar  the user id as written in the files. DisenCDR (UniCDR "dual-user-intra"): every
                            user is in both domains under the same id. CDRIB (UniCDR "dual-user-inter"): ids are
                            per-domain 0-based indices; the overlapping users (the cold-start evaluation users
                            among them) carry the same id in both domains, and ``metadata["shared_user"]``
                            (UniCDR's ``shared_user``: the smallest evaluation user id over both domains) marks
                            where the ids of users with training data in only one domain begin. Douban: one
                            user id space (1-based) shared by both domains.
``item_id``   int64 scalar  global item id, 1..num_items (0 = padding): domain 0's items first, then domain
                            1's. ``metadata["domain_item_ranges"][name] = [first, last]``; the id within the
                            domain's files is ``item_id - first`` for the 0-based DisenCDR/CDRIB files (UniCDR's
                            own ``file id + 1`` is ``item_id - first + 1``) and ``item_id - first + 1`` for the
                            1-based Douban files.
``domain``    int32 scalar  0 or 1; names in ``metadata["domain_names"]``.
``rating``    float32       1.0 for the implicit-feedback files (DisenCDR's third column is always 1; CDRIB has
                            none); 1..5 for Douban.
``negatives`` int64 [n]     negative item ids (global ids, like ``item_id``) that the source files provide for
                            an evaluation record. None of these sources provides any (UniCDR, DisenCDR and CDRIB
                            all draw 999 random negatives at evaluation time), so it is empty everywhere and
                            ``metadata["provided_negatives"] == 0``; evaluation code samples its own.

Splits
  * ``disencdr/<X_Y>`` (dirs ``X_Y`` = domain 0, ``Y_X`` = domain 1): ``train`` (train.txt), ``test`` (test.txt),
    and ``valid`` (also test.txt: UniCDR's dual-user-intra protocol validates on the test file; see
    ``metadata["valid_source"]``). ``test_original.txt`` (one held-out item for every user) is not read: in all
    8 folders test.txt is exactly its lines whose item occurs in train.txt, in the same order, i.e. what the
    protocol below would keep of it.
  * ``cdrib/<X_Y>``: ``train`` / ``valid`` / ``test`` from train.txt / valid.txt / test.txt of both dirs; the
    evaluation users of a domain are cold-start there (none of them is in that domain's train.txt).
  * ``douban_gadtcdr``: ``full`` (every rating of both domains; the source provides no held-out split).

Protocol drops (counted in ``metadata["drops"]``, never silent): an evaluation record whose item never occurs
in that domain's train.txt is dropped, as UniCDR's ``load_domain_valid_run`` does (it cannot be scored).

Strictness: a missing split file, a checksum different from SOURCE.md, an empty line, a line with the wrong number
of fields, a non-integer, an id outside the declared range, a constant column (DisenCDR's ``1``) holding anything
else, or a repeated (user, item) pair within a file raises :class:`~jaxrec.data.errors.DataError` naming file,
line, field and what was expected.

Metadata (catalogue convention): ``num_users`` (user ids 0..num_users-1), ``num_items``, ``domain_names``,
``domain_item_ranges``, ``stats`` (users, items, interactions; per split: records, users, items, id ranges, per
domain), ``drops`` (``DropReport``), ``checksums`` (files verified), ``raw_rows`` per file. :func:`dataset_stats`
returns the statistics with the split sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import _strict_io as sio
from jaxrec.data.errors import DataError

__all__ = ["UserItemConfig", "JaxrecUserItem", "dataset_stats", "features"]

_DISENCDR_SHA256 = {
    "dataset/cloth_electronic/test.txt": "0b604b69d3eb531bf99a11e2322f247694f7a593905e0c0c04c54e2a58fb0f78",
    "dataset/cloth_electronic/train.txt": "678124e0dbf8d162041f8b656bd5e89ee2a678df2c85812f94fd7c0bd2062f6f",
    "dataset/cloth_sport/test.txt": "0d034810261027b080d506399426d3eb4f26b4b90a121fe79ebaef246a82b1bd",
    "dataset/cloth_sport/train.txt": "3e039ec9baff975cb47722c4704f7d2103c2bbf2a3c30ed2d264e17b69d4fd0a",
    "dataset/electronic_cloth/test.txt": "1a1a5ce75f986052afc05337ea5d1e5ac44c7017f06f1ecc5ccadb523aadf08d",
    "dataset/electronic_cloth/train.txt": "fbccec759f2acfec35927c07a1a4bd911f75106de34d6b21e7d7a8a7ffc68e81",
    "dataset/electronic_phone/test.txt": "322a8e4c7b5d10e2a3d91dbb2d7833eaf2ba684f4c5109dc1ea4e6ee08119c46",
    "dataset/electronic_phone/train.txt": "cb09610ab143478097937c235c4932fe39b5c664d434dd5abba3c5eb5d75f028",
    "dataset/phone_electronic/test.txt": "a3d0d2fb03c25994c3509af3acc6eeca5009b00751f9b12e28fdf52843a027c6",
    "dataset/phone_electronic/train.txt": "a439eb3fdf4d08e58da1d86e1f711cf0acf59f28944d347ad4b3fb9454df54f9",
    "dataset/phone_sport/test.txt": "1665b2846c5011ca870ff79bcfb3cc632aa3eeaa6ea9853ee45549ac0858b444",
    "dataset/phone_sport/train.txt": "d38cd0da5379bbec03a19cc3eb95a8b52caeeb179dfb515ba2d894b1e193572d",
    "dataset/sport_cloth/test.txt": "7b43d370047f23cbc6862188aba53b3a3241948255584a1f3f5c189118f16490",
    "dataset/sport_cloth/train.txt": "45c517a6fc7721f168411b69eb3f6e6ef896bbe06f599f6f7b4a5844ff925629",
    "dataset/sport_phone/test.txt": "5ff3bc25da94612e7a35672edba277c4acc497cc8d87d268bca891e64dc98640",
    "dataset/sport_phone/train.txt": "c55f3f576465795163f45cdb6df9484626dfbb12799393a7d06e4401cfcb6f3a",
}
# file: (rows, users, (user id min, max), items, (item id min, max)) as quoted in disencdr/SOURCE.md
_DISENCDR_SOURCE_STATS = {
    "dataset/cloth_electronic/test.txt": (12526, 12526, (0, 15760), 8819, (1, 51861)),
    "dataset/cloth_electronic/train.txt": (121083, 15761, (0, 15760), 48781, (0, 51864)),
    "dataset/cloth_sport/test.txt": (7540, 7540, (0, 9927), 5495, (1, 41301)),
    "dataset/cloth_sport/train.txt": (87829, 9928, (0, 9927), 39008, (0, 41302)),
    "dataset/electronic_cloth/test.txt": (13824, 13824, (1, 15760), 8293, (3, 53287)),
    "dataset/electronic_cloth/train.txt": (210865, 15761, (0, 15760), 51447, (0, 53308)),
    "dataset/electronic_phone/test.txt": (2560, 2560, (0, 3324), 2099, (10, 39446)),
    "dataset/electronic_phone/train.txt": (115554, 3325, (0, 3324), 38706, (0, 39462)),
    "dataset/phone_electronic/test.txt": (2559, 2559, (2, 3324), 1795, (48, 18451)),
    "dataset/phone_electronic/train.txt": (50407, 3325, (0, 3324), 17709, (0, 18461)),
    "dataset/phone_sport/test.txt": (3999, 3999, (0, 4996), 2431, (0, 14616)),
    "dataset/phone_sport/train.txt": (42446, 4998, (0, 4997), 13655, (0, 14617)),
    "dataset/sport_cloth/test.txt": (8326, 8326, (0, 9926), 5734, (4, 32309)),
    "dataset/sport_cloth/train.txt": (92612, 9928, (0, 9927), 30796, (0, 32309)),
    "dataset/sport_phone/test.txt": (3698, 3698, (0, 4996), 2729, (3, 22100)),
    "dataset/sport_phone/train.txt": (50558, 4998, (0, 4997), 20845, (0, 22100)),
}
_CDRIB_SHA256 = {
    "dataset/cloth_sport/test.txt": "4980e2e43f9523f9f4633e36e7c84b84caa0d09324f7c768d4985425a2832077",
    "dataset/cloth_sport/train.txt": "12885bf488ae0e3ef11c4dbc518f4bcc82dcccca799ae0506a21a4ce1ccff0c2",
    "dataset/cloth_sport/valid.txt": "f53c435ca8ec036048adcdf495e109dd7fc5f0917d1efdc29f4817f86a3f8fee",
    "dataset/game_video/test.txt": "b61703adcb7c9b0a8e4b61c865b650aee05b84fba7e15d690f0b50df3aa85bdc",
    "dataset/game_video/train.txt": "758f443fde7211f7253d22999d4c94eb6a07ba10661d38ef3a72a5c78c70105f",
    "dataset/game_video/valid.txt": "e6dace5c64d53c0df3b09ed606a530b22d5147da068c0ae4e5bf8f805381a973",
    "dataset/sport_cloth/test.txt": "6f15fea0aa3ec02e4609aa4245ac7a4c6ea3c5e30d662ed1155698ab606e2582",
    "dataset/sport_cloth/train.txt": "9c85ed3ce03c67d97cbf5f7789c70d74e47187d7ec0c5d220943f7ed4a92a4fc",
    "dataset/sport_cloth/valid.txt": "a7a61b75096decef81dc5e59efee15bf5af748ba123ddb22d373fc71ae4537df",
    "dataset/video_game/test.txt": "ba2cb882b8369635a2d72703f4ccbd961475064479c8727ef7cc3d973e800abd",
    "dataset/video_game/train.txt": "fcba16c5d28a052ae4251d5db055397fac34cb9a6bba36506d195982aacae887",
    "dataset/video_game/valid.txt": "2da785b3a1e7e1dbb4c0fcc35e47ea8654b7c4dbd4313f808da2a4e346cde812",
}
# file: (rows, users, (user id min, max), items, (item id min, max)) as quoted in cdrib/SOURCE.md
_CDRIB_SOURCE_STATS = {
    "dataset/cloth_sport/test.txt": (3085, 907, (8838, 9827), 2519, (1, 17942)),
    "dataset/cloth_sport/train.txt": (187880, 40839, (0, 41828), 17943, (0, 17942)),
    "dataset/cloth_sport/valid.txt": (3156, 915, (8838, 9827), 2544, (0, 17936)),
    "dataset/game_video/test.txt": (1304, 212, (1953, 2178), 1138, (4, 12318)),
    "dataset/game_video/train.txt": (155036, 24799, (0, 25024), 12319, (0, 12318)),
    "dataset/game_video/valid.txt": (1381, 213, (1953, 2178), 1191, (4, 12318)),
    "dataset/sport_cloth/test.txt": (3546, 897, (7856, 8837), 2698, (1, 12651)),
    "dataset/sport_cloth/train.txt": (163291, 26346, (0, 27327), 12655, (0, 12654)),
    "dataset/sport_cloth/valid.txt": (3589, 912, (7856, 8837), 2749, (1, 12654)),
    "dataset/video_game/test.txt": (1458, 216, (1736, 1952), 1157, (0, 8750)),
    "dataset/video_game/train.txt": (156091, 19240, (0, 19456), 8751, (0, 8750)),
    "dataset/video_game/valid.txt": (1435, 210, (1736, 1952), 1155, (0, 8745)),
}

LAYOUT_INTRA = "dual-user-intra"  # DisenCDR files, UniCDR --task dual-user-intra
LAYOUT_INTER = "dual-user-inter"  # CDRIB files, UniCDR --task dual-user-inter
LAYOUT_RATINGS = "ratings"  # Douban user/item/rating files

_SPLIT_FILES = {
    LAYOUT_INTRA: {"train": "train.txt", "valid": "test.txt", "test": "test.txt"},
    LAYOUT_INTER: {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
}
_EVAL_SPLITS = ("valid", "test")

def features() -> tfds.features.FeaturesDict:
    """The record schema (a fresh object per builder: TFDS test mocks patch FeaturesDict instances)."""
    return tfds.features.FeaturesDict({
        "user_id": np.int64,
        "item_id": np.int64,
        "domain": np.int32,
        "rating": np.float32,
        "negatives": tfds.features.Tensor(shape=(None,), dtype=np.int64),
    })

_NO_NEGATIVES = np.zeros((0,), np.int64)


@dataclasses.dataclass(eq=False, kw_only=True)
class UserItemConfig(sio.RawConfig):
    """One dataset: two domains, their files, and the declared id ranges (inclusive, as written in the files).

    Attributes:
      layout: ``"dual-user-intra"`` | ``"dual-user-inter"`` | ``"ratings"``.
      domains: domain names, index = ``domain`` field.
      domain_paths: per domain, its folder (intra/inter) or its ratings file (ratings), relative to the raw folder.
      user_ranges / item_ranges: per domain, the declared inclusive id ranges of the files (an id outside is a
        DataError). Global item ids: domain ``d``'s file id ``i`` becomes ``i + item_offsets[d]``, laying the
        domains' id ranges end to end from 1.
      catalog_name, licence, source_stats: what the catalogue shows.
    """

    layout: str = LAYOUT_INTRA
    domains: tuple[str, ...] = ()
    domain_paths: tuple[str, ...] = ()
    user_ranges: tuple[tuple[int, int], ...] = ()
    item_ranges: tuple[tuple[int, int], ...] = ()
    catalog_name: str = ""
    licence: str = ""
    source_stats: dict = dataclasses.field(default_factory=dict)

    @property
    def domain_item_ranges(self) -> list[tuple[int, int]]:
        """Inclusive global item-id range of each domain (domains laid end to end from 1)."""
        out, first = [], 1
        for lo, hi in self.item_ranges:
            out.append((first, first + hi - lo))
            first += hi - lo + 1
        return out

    @property
    def item_offsets(self) -> list[int]:
        return [g[0] - r[0] for g, r in zip(self.domain_item_ranges, self.item_ranges)]


def _pair_config(family: str, layout: str, task: str, ranges: dict, sha: dict, source: dict,
                 licence: str) -> UserItemConfig:
    x, y = task.split("_")
    dirs = (f"dataset/{x}_{y}", f"dataset/{y}_{x}")
    return UserItemConfig(
        name=f"{family}_{task}", description=f"{family} {x}/{y} ({layout})", layout=layout,
        domains=(x, y), domain_paths=dirs,
        user_ranges=tuple((0, ranges[d][0] - 1) for d in dirs),
        item_ranges=tuple((0, ranges[d][1] - 1) for d in dirs),
        raw_subdir=family, catalog_name=f"{family}/{task}", licence=licence,
        checksums={k[len("dataset/"):].join(["dataset/", ""]): v for k, v in sha.items()
                   if k.startswith(dirs[0] + "/") or k.startswith(dirs[1] + "/")},
        source_stats={k: v for k, v in source.items() if k.startswith(dirs[0] + "/") or k.startswith(dirs[1] + "/")},
    )


# Declared id spaces per folder: (users, items) = largest id in the folder's train/valid/test files + 1, as quoted
# in SOURCE.md (the files' ids are 0-based).
_DISENCDR_RANGES = {
    "dataset/cloth_electronic": (15761, 51865), "dataset/cloth_sport": (9928, 41303),
    "dataset/electronic_cloth": (15761, 53309), "dataset/electronic_phone": (3325, 39463),
    "dataset/phone_electronic": (3325, 18462), "dataset/phone_sport": (4998, 14618),
    "dataset/sport_cloth": (9928, 32310), "dataset/sport_phone": (4998, 22101),
}
_CDRIB_RANGES = {
    "dataset/cloth_sport": (41829, 17943), "dataset/game_video": (25025, 12319),
    "dataset/sport_cloth": (27328, 12655), "dataset/video_game": (19457, 8751),
}
_DISENCDR_LICENCE = ("MIT (github.com/cjx96/DisenCDR, (c) 2021 cjx96); data derived from the Amazon review data "
                     "(McAuley lab, UCSD): research use only; cite DisenCDR (SIGIR 2022)")
_CDRIB_LICENCE = ("MIT (github.com/cjx96/CDRIB, (c) 2021 cjx96); data derived from the Amazon review data "
                  "(McAuley lab, UCSD): research use only; cite CDRIB (ICDE 2022)")
_DOUBAN_LICENCE = ("GPL-3.0 (github.com/fengzhu1/GA-DTCDR repository licence; it does not say whether it covers "
                   "the data); Douban ratings for research; cite GA-DTCDR (IJCAI 2020) / DTCDR (CIKM 2019)")

DISENCDR_TASKS = ("sport_cloth", "phone_sport", "electronic_phone", "cloth_electronic")
CDRIB_TASKS = ("game_video", "sport_cloth")  # cell_electronic: partner folder electronic_cell is missing

_DOUBAN_CONFIG = UserItemConfig(
    name="douban_gadtcdr", description="Douban Book + Music explicit ratings (GA-DTCDR)", layout=LAYOUT_RATINGS,
    domains=("book", "music"),
    domain_paths=("Data/douban_book/ratings.dat", "Data/douban_music/ratings.dat"),
    user_ranges=((1, 2718), (1, 2718)), item_ranges=((1, 6777), (1, 5567)),
    raw_subdir="douban_gadtcdr", catalog_name="douban_gadtcdr", licence=_DOUBAN_LICENCE,
    checksums={
        "Data/douban_book/ratings.dat": "cc1c191fabe2e05e95cd6dbe7be19d13ed3e1b27b80be2050e4f6b4e40945ddd",
        "Data/douban_music/ratings.dat": "40944be25f79e6cf80ab9acf0dca8f4b9b9fe2724a068702294608883ad46775",
    },
    source_stats={
        "book": {"rows": 96041, "users": 2110, "items": 6777, "user_id_range": (1, 2718),
                 "ratings_1_to_5": (1605, 4207, 21018, 38975, 30236)},
        "music": {"rows": 69709, "users": 1672, "items": 5567, "user_id_range": (2, 2718),
                  "ratings_1_to_5": (1478, 3215, 13031, 24805, 27180)},
        "overlapping_users": 1566, "union_users": 2216,
    },
)

BUILDER_CONFIGS = (
    [_pair_config("disencdr", LAYOUT_INTRA, t, _DISENCDR_RANGES, _DISENCDR_SHA256, _DISENCDR_SOURCE_STATS,
                  _DISENCDR_LICENCE) for t in DISENCDR_TASKS]
    + [_pair_config("cdrib", LAYOUT_INTER, t, _CDRIB_RANGES, _CDRIB_SHA256, _CDRIB_SOURCE_STATS, _CDRIB_LICENCE)
       for t in CDRIB_TASKS]
    + [_DOUBAN_CONFIG]
)


def read_domain_file(path, cfg: UserItemConfig, domain: int) -> dict[str, np.ndarray]:
    """Strictly read one file of ``cfg``'s layout for ``domain``: ``{"user", "item", "rating", "_line"}``.

    ``item`` is the global item id (file id + ``cfg.item_offsets[domain]``); ``rating`` float32.
    """
    bounds = {"user": cfg.user_ranges[domain], "item": cfg.item_ranges[domain]}
    if cfg.layout == LAYOUT_INTRA:
        t = sio.read_int_table(path, ("user", "item", "label"), bounds=bounds, fixed={"label": 1})
        rating = np.ones(len(t["user"]), np.float32)
    elif cfg.layout == LAYOUT_INTER:
        t = sio.read_int_table(path, ("user", "item"), bounds=bounds)
        rating = np.ones(len(t["user"]), np.float32)
    elif cfg.layout == LAYOUT_RATINGS:
        t = sio.read_int_table(path, ("user", "item", "rating"), bounds={**bounds, "rating": (1, 5)})
        rating = t["rating"].astype(np.float32)
    else:
        raise DataError(path, "unknown layout", field="layout", expected=str(sorted(_SPLIT_FILES)), got=cfg.layout)
    sio.check_unique(path, (t["user"], t["item"]), ("user", "item"), t["_line"],
                     what="duplicate (user, item) record")
    return {"user": t["user"], "item": t["item"] + cfg.item_offsets[domain], "rating": rating, "_line": t["_line"]}


class JaxrecUserItem(sio.RawBuilder):
    """UniCDR-style two-domain user-item data (DisenCDR, CDRIB, Douban Book/Music); schema in the module doc."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n\n")[0] + f" ({cfg.description})",
                                     features=features(), metadata=tfds.core.MetadataDict(),
                                     license=getattr(cfg, "licence", None) or None)

    def _split_files(self) -> dict[str, list[str]]:
        cfg = self.builder_config
        if cfg.layout == LAYOUT_RATINGS:
            return {"full": list(cfg.domain_paths)}
        return {split: [f"{d}/{fname}" for d in cfg.domain_paths] for split, fname in _SPLIT_FILES[cfg.layout].items()}

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        split_files = self._split_files()
        cache: dict[str, dict] = {}
        raw_rows: dict[str, int] = {}

        def table(rel: str, domain: int) -> dict:
            if rel not in cache:
                cache[rel] = read_domain_file(self.raw_file(rel, what="split file"), cfg, domain)
                raw_rows[rel] = len(cache[rel]["user"])
            return cache[rel]

        tables = {split: [table(rel, d) for d, rel in enumerate(rels)] for split, rels in split_files.items()}
        train_key = "train" if "train" in tables else "full"
        train_items = [np.unique(t["item"]) for t in tables[train_key]]
        train_users = [np.unique(t["user"]) for t in tables[train_key]]

        drops = readers.DropReport()
        kept: dict[str, list[np.ndarray]] = {}
        split_stats: dict[str, dict[str, Any]] = {}
        for split, ts in tables.items():
            kept[split] = []
            by_domain = {}
            for d, t in enumerate(ts):
                keep = np.ones(len(t["user"]), bool)
                if split in _EVAL_SPLITS:
                    keep = np.isin(t["item"], train_items[d])
                    bad = np.nonzero(~keep)[0]
                    drops.add(f"{split}/{cfg.domains[d]}", "eval item never in this domain's train.txt (UniCDR)",
                              n=bad.size, where=f"{split_files[split][d]}:{t['_line'][bad[0]]}" if bad.size else None)
                kept[split].append(keep)
                by_domain[cfg.domains[d]] = {
                    "file": split_files[split][d], "raw_rows": int(len(keep)), "interactions": int(keep.sum()),
                    "users": sio.id_stats(t["user"][keep]), "items": sio.id_stats(t["item"][keep]),
                }
            users = np.concatenate([t["user"][k] for t, k in zip(ts, kept[split])])
            items = np.concatenate([t["item"][k] for t, k in zip(ts, kept[split])])
            split_stats[split] = {"users": int(np.unique(users).size), "items": int(np.unique(items).size),
                                  "interactions": int(items.size), "by_domain": by_domain}
        n_ids = cfg.domain_item_ranges[-1][1] + 1
        pair_keys = np.unique(np.concatenate([t["user"][k] * n_ids + t["item"][k]
                                              for split in tables for t, k in zip(tables[split], kept[split])]))
        ranges = cfg.domain_item_ranges
        num_users = max(hi for _, hi in cfg.user_ranges) + 1
        md: dict[str, Any] = {
            "catalog_name": cfg.catalog_name,
            "layout": cfg.layout,
            "domain_names": list(cfg.domains),
            "num_users": num_users,
            "num_items": ranges[-1][1],
            "domain_item_ranges": {name: list(r) for name, r in zip(cfg.domains, ranges)},
            "user_id_ranges": {name: list(r) for name, r in zip(cfg.domains, cfg.user_ranges)},
            "file_item_id_ranges": {name: list(r) for name, r in zip(cfg.domains, cfg.item_ranges)},
            "provided_negatives": 0,
            "raw_rows": raw_rows,
            "drops": drops.as_dict(),
            "licence": cfg.licence,
            "stats": {
                "users": int(np.unique(pair_keys // n_ids).size),
                "items": ranges[-1][1],
                "items_seen": int(np.unique(pair_keys % n_ids).size),
                "interactions": int(len(pair_keys)),
                "splits": split_stats,
            },
        }
        if cfg.layout == LAYOUT_INTRA:
            md["valid_source"] = "test.txt (UniCDR dual-user-intra validates on the test file)"
            md["users_in_both_domains"] = int(np.intersect1d(*train_users).size)
        if cfg.layout == LAYOUT_INTER:
            eval_users = [np.unique(np.concatenate([tables[s][d]["user"] for s in ("valid", "test")]))
                          for d in range(2)]
            md["shared_user"] = int(min(u.min() for u in eval_users))
            md["eval_users"] = {cfg.domains[d]: sio.id_stats(eval_users[d]) for d in range(2)}
            md["eval_users_in_own_train"] = [int(np.isin(eval_users[d], train_users[d]).sum()) for d in range(2)]
            md["eval_users_in_other_train"] = [int(np.isin(eval_users[d], train_users[1 - d]).sum())
                                              for d in range(2)]
        if cfg.layout == LAYOUT_RATINGS:
            md["overlapping_users"] = int(np.intersect1d(*train_users).size)
            md["ratings_1_to_5"] = {cfg.domains[d]: np.bincount(t["rating"].astype(np.int64), minlength=6)[1:]
                                    for d, t in enumerate(tables["full"])}
        drops.log(cfg.catalog_name)
        self.set_metadata(md)
        return {split: self._generate_examples(_records(tables[split], kept[split])) for split in tables}


def _records(ts: list[dict], keeps: list[np.ndarray]):
    for d, (t, keep) in enumerate(zip(ts, keeps)):
        dom = np.int32(d)
        for i in np.nonzero(keep)[0]:
            yield f"{d}:{int(t['_line'][i])}", {
                "user_id": t["user"][i], "item_id": t["item"][i], "domain": dom,
                "rating": t["rating"][i], "negatives": _NO_NEGATIVES,
            }


def dataset_stats(builder) -> dict:
    """Split sizes plus the statistics stored at preparation (per split/domain counts, id ranges, drops)."""
    return sio.builder_stats(builder)


def _make_builder(config_name: str):
    def make(raw_dir: str | None, data_dir: str):
        return JaxrecUserItem(config=config_name, data_dir=data_dir, raw_root=raw_dir)
    return make


for _cfg in BUILDER_CONFIGS:
    catalog.register(catalog.DatasetSpec(
        name=_cfg.catalog_name, kind="user_item", make_builder=_make_builder(_cfg.name),
        raw_subdir=_cfg.raw_subdir, licence=_cfg.licence, source_stats=_cfg.source_stats,
        stats_fn=dataset_stats, description=_cfg.description))
del _cfg
