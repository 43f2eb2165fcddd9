"""Graph datasets: TU ``tu_imdb/binary`` / ``tu_imdb/multi`` (graph classification) and ``cora_planetoid``.

TU IMDB (builder :class:`JaxrecTuGraphs`; DGCNN/GIN text format + the standard 10-fold splits). Split ``full``
(every graph; the source provides cross-validation folds, not a train/test split), one record per graph:

``graph_id``      int64 scalar  0-based position in ``<NAME>.txt`` (= the indices of the fold files)
``label``         int64 scalar  graph class, 0..num_classes-1
``num_nodes``     int64 scalar
``senders``       int32 [2E]    directed edge list within the graph (0-based node ids); each undirected edge
``receivers``     int32 [2E]    appears in both directions, exactly as the file lists it from both ends
``node_degrees``  int32 [n]     number of neighbours of each node
``node_tags``     int32 [n]     the file's node tags (all 0 for IMDB: no node features)
``test_fold``     int32 scalar  the fold k in 1..10 whose ``test_idx-k.txt`` holds this graph; fold k trains on
                                every graph with ``test_fold != k`` (checked: ``train_idx-k.txt`` is exactly that)

Cora (builder :class:`JaxrecPlanetoid`; Planetoid ``ind.cora.*`` files). One record per node; split ``full``
(2,708 nodes) plus the Planetoid subsets ``train`` (140), ``validation`` (500) and ``test`` (1,000):

``node_id``          int64 scalar  0..2707 in GCN's ``load_data`` order (test rows placed by ``test.index``)
``label``            int64 scalar  class 0..6 (argmax of the one-hot rows of ally/ty)
``feature_indices``  int32 [k]     indices of the node's non-zero bag-of-words features (all 1433 are binary)
``neighbors``        int32 [deg]   sorted distinct neighbours in the undirected graph
``is_train`` / ``is_val`` / ``is_test``  bool  Planetoid masks (nodes 0..139, 140..639, ``test.index``)

:func:`planetoid_arrays` turns the ``full`` split into dense arrays (features ``uint8 [N, 1433]``, labels,
``senders``/``receivers`` in both directions, masks) for full-graph training.

The ``ind.cora.*`` files are Python 2 pickles. They are read with :class:`RestrictedUnpickler`, which admits
only the globals those files reference (``numpy.ndarray``, ``numpy.dtype``, numpy's array ``_reconstruct``,
``collections.defaultdict``, ``list``, and ``scipy.sparse.csr.csr_matrix`` - which is mapped to an inert
record of its pickled fields, so scipy code never runs and scipy is not needed) and refuses anything else
with a :class:`~jaxrec.data.errors.DataError` naming the file and the refused global, before it is called.

Protocol drops (``metadata["drops"]``): Cora's ``graph`` lists 302 neighbours twice; they are collapsed (as
GCN's networkx graph does). Strictness (DataError naming file, line, field, expected): a missing or altered
file (sha256 pinned from SOURCE.md), a truncated or malformed graph block, a neighbour index outside the graph,
a neighbour listed twice, an edge listed from one end only, a label outside the declared classes, a graph
count different from the header, fold files that are not a partition; for Cora, feature values other than
0/1, label rows that are not one-hot, shape mismatches, ids outside 0..2707, ``x``/``y`` disagreeing with the
first rows of ``allx``/``ally``.

Metadata: ``stats`` (graphs, nodes, edges, class counts, fold sizes / nodes, edges, split sizes), ``drops``,
``checksums``; :func:`dataset_stats` returns it with the split sizes.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import _strict_io as sio
from jaxrec.data.errors import DataError

__all__ = ["TuConfig", "JaxrecTuGraphs", "PlanetoidConfig", "JaxrecPlanetoid", "RestrictedUnpickler",
           "load_restricted_pickle", "read_tu_file", "planetoid_arrays", "dataset_stats"]

_IMDBBINARY_SHA256 = {
    "IMDBBINARY/IMDBBINARY.txt": "1068c698677c07c04f3ad56fc4a175cb2161523c840abfdaf50e101ecc30504f",
    "IMDBBINARY/10fold_idx/test_idx-1.txt": "0c608b497f93881a54ef04786a5239af86c1989130a7bb9201693c8760414c86",
    "IMDBBINARY/10fold_idx/test_idx-10.txt": "ee64162e19c034d54e013698f7ae63d31567b1afd8207f54a89621d994f1d6b0",
    "IMDBBINARY/10fold_idx/test_idx-2.txt": "a1d71bce61e390604a46fef70a4b3b19ef3ca80ccda3061d2708c55be71ccc93",
    "IMDBBINARY/10fold_idx/test_idx-3.txt": "e26189e39e2642552c61a4857308f5cacb895f13b2e68eb7fe9e20b9fd789729",
    "IMDBBINARY/10fold_idx/test_idx-4.txt": "43b0282e3c3ab606702cd817d86b8623965b016b2bca587f934e62df92318015",
    "IMDBBINARY/10fold_idx/test_idx-5.txt": "a4902e21539ff4ac6e66aa8cfd8907147dd765336ee2083ef8131cabee3ac1dc",
    "IMDBBINARY/10fold_idx/test_idx-6.txt": "6abaa9eca41b26f5fab3382242b26d3e6a8f8e720083456d00633fe62a57cd4d",
    "IMDBBINARY/10fold_idx/test_idx-7.txt": "cfe61c0d986b86ed01ca6dad850bb999e5d0098aec978fc36b19f8396e65e694",
    "IMDBBINARY/10fold_idx/test_idx-8.txt": "048f900449aa3e3732feb493a8d6130d4f879fb4440c378d08fe19d7e1af3394",
    "IMDBBINARY/10fold_idx/test_idx-9.txt": "73a67d1f3da3143c0f687cc143b584cf46b2708059d1ab87996f4a4fb37fe202",
    "IMDBBINARY/10fold_idx/train_idx-1.txt": "658f4dced498fcd4199c106c6d220d930f68faf12cb12c0aa59c12d4f8bdadf7",
    "IMDBBINARY/10fold_idx/train_idx-10.txt": "6a35bea0e548cbdb60b56409176329a7f362b7ead3fc5fd1356fddf7de4e19f1",
    "IMDBBINARY/10fold_idx/train_idx-2.txt": "c867934d10a72c07af5d4d3cccda154bdc2b025ce47c44b4e6ffce9b93df848c",
    "IMDBBINARY/10fold_idx/train_idx-3.txt": "b698cd8e57172ef76386cab48860429355ca22a274cd34586b816e6b82d9eec3",
    "IMDBBINARY/10fold_idx/train_idx-4.txt": "a08c2f2235997cdceed58df2938e7e2e7b73e262be15d6416dc840a689ff79f0",
    "IMDBBINARY/10fold_idx/train_idx-5.txt": "19878731261b9c109e7eed68b4244065b5e38503a900961bb49396426c8fd3ae",
    "IMDBBINARY/10fold_idx/train_idx-6.txt": "62ab7706f1a2c2406ef7ecaac99601ce1848326b5610546896d6a71a7a393f50",
    "IMDBBINARY/10fold_idx/train_idx-7.txt": "4507c081570dcc3fe16b3c79ac38e21564bc51719447cf2805bdf06d05e1c48d",
    "IMDBBINARY/10fold_idx/train_idx-8.txt": "0a9ead201dd5635eb0be9130d060cd944e59500c7f0c2c6541384ffbe883f564",
    "IMDBBINARY/10fold_idx/train_idx-9.txt": "b8fa766d7e96a135c84a77cd2e23d84b0cc94ddf6bf742a9ee48c851496c408e",
}
_IMDBMULTI_SHA256 = {
    "IMDBMULTI/IMDBMULTI.txt": "f4cc1b32112303bf1b16a8351df8b8073978fdead823775fbe79e60cf94e7009",
    "IMDBMULTI/10fold_idx/test_idx-1.txt": "e2510c3ce39c3608cbd25c72264ea692025b7f8bfa1dbedb310d0e3cc398ecd0",
    "IMDBMULTI/10fold_idx/test_idx-10.txt": "8dcdcecf88906857978b67fb31d2efe6f8943b758cc6c775a583f4343d8c770a",
    "IMDBMULTI/10fold_idx/test_idx-2.txt": "0c72858a0e0da55dd0af1ae5d602ba063d27d67e75398438f10de17ba70050a9",
    "IMDBMULTI/10fold_idx/test_idx-3.txt": "dd18146e61d44efc6282b5e6b737b62105c73ee406386359c02e022c451f4324",
    "IMDBMULTI/10fold_idx/test_idx-4.txt": "bc8e65d42e247ff08808577b05e151ba33cee3bd92bf45db1a0a6a4f934d3957",
    "IMDBMULTI/10fold_idx/test_idx-5.txt": "cf3f8c3195996ce636e17b9d3bbd0b8bc32215c8c4ce60e7a429d719c54f9057",
    "IMDBMULTI/10fold_idx/test_idx-6.txt": "82be44f2406197f653f16533b1f4cbdf752def8eec7699734c43df7fb67f49eb",
    "IMDBMULTI/10fold_idx/test_idx-7.txt": "56b523b389cea126826fcdb90a24ec26112f4189581e8d4c5318d829afc036bd",
    "IMDBMULTI/10fold_idx/test_idx-8.txt": "25b3b9de8482b33ae32fcbe47e6366626fd419eaafdd6b030f20fdac7a7dc042",
    "IMDBMULTI/10fold_idx/test_idx-9.txt": "f672a413c41f3c77cef18956545cd323b5df1a3667a64ec4be3c6bd9d6de4abf",
    "IMDBMULTI/10fold_idx/train_idx-1.txt": "0ae8bf61aaf06d3e3f385602feeeed97acc04989547f95bf86c070dfea76cfc0",
    "IMDBMULTI/10fold_idx/train_idx-10.txt": "cee0c7422cdc61dfaf40ce253b7285f6fba5f6f0dccc07fcdb8d8de580438d78",
    "IMDBMULTI/10fold_idx/train_idx-2.txt": "69e0b4da0c30d1ceb11b1ecd9ba77f6ed5a8a8c9e826b8fe28adbf88db7d941f",
    "IMDBMULTI/10fold_idx/train_idx-3.txt": "6a9b4d0fedfc4764349de780bf8c35acb73473ed32603b91f557fa82399fcfdf",
    "IMDBMULTI/10fold_idx/train_idx-4.txt": "5f932ac4c3d22365576154d9a520e4049756c5f5fa689d4ffd7e58c2bb49159a",
    "IMDBMULTI/10fold_idx/train_idx-5.txt": "3cdc944c737a1d6671ccbe6cac8d07857de416c150e0e11f4e2a04e11d1837d1",
    "IMDBMULTI/10fold_idx/train_idx-6.txt": "53fccede2c6a7082c3dbb5136d79e69c07da8258255205190f9a1fe87f0dc3ee",
    "IMDBMULTI/10fold_idx/train_idx-7.txt": "b353dc44f49c498b10b176bf35ee6f5bbbe23ac796d11876f52566097d70f4b6",
    "IMDBMULTI/10fold_idx/train_idx-8.txt": "552fa063f51c7abb880c715a15af8994e3c81604ba2cd2ae0c0e736782055b93",
    "IMDBMULTI/10fold_idx/train_idx-9.txt": "19107f560e581002a804d58334255a510b6dc7e5c1e938dd9b011721587d5493",
}
_CORA_SHA256 = {
    "data/ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "data/ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "data/ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "data/ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "data/ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "data/ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "data/ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "data/ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
}

_TU_LICENCE = ("TU IMDB data (Yanardag & Vishwanathan, KDD 2015): no explicit licence, public research data; "
               "files from github.com/muhanzhang/pytorch_DGCNN (MIT, (c) 2018 Muhan Zhang); cite the paper "
               "and TUDataset")
_CORA_LICENCE = ("Cora (McCallum et al. 2000): no explicit licence, public research data; Planetoid files from "
                 "github.com/kimiyoung/planetoid (MIT, (c) 2016 Zhilin Yang); cite Planetoid (ICML 2016)")


# ======================================================================================= TU graph classification

@dataclasses.dataclass(eq=False, kw_only=True)
class TuConfig(sio.RawConfig):
    """One TU dataset in DGCNN text format: ``<prefix>/<prefix>.txt`` and ``<prefix>/10fold_idx/*``."""

    prefix: str = ""
    num_graphs: int = 0
    num_classes: int = 0
    num_folds: int = 10
    catalog_name: str = ""
    source_stats: dict = dataclasses.field(default_factory=dict)


TU_CONFIGS = [
    TuConfig(name="imdb_binary", description="IMDB-BINARY (TU), DGCNN format, 10 folds", prefix="IMDBBINARY",
             num_graphs=1000, num_classes=2, raw_subdir="tu_imdb", checksums=_IMDBBINARY_SHA256,
             catalog_name="tu_imdb/binary",
             source_stats={"graphs": 1000, "class_counts": [500, 500], "nodes": 19773, "edges": 96531,
                           "fold_train": 900, "fold_test": 100}),
    TuConfig(name="imdb_multi", description="IMDB-MULTI (TU), DGCNN format, 10 folds", prefix="IMDBMULTI",
             num_graphs=1500, num_classes=3, raw_subdir="tu_imdb", checksums=_IMDBMULTI_SHA256,
             catalog_name="tu_imdb/multi",
             source_stats={"graphs": 1500, "class_counts": [500, 500, 500], "nodes": 19502, "edges": 98903,
                           "fold_train": 1350, "fold_test": 150}),
]


def read_tu_file(path, *, num_graphs: int, num_classes: int) -> list[dict]:
    """Strictly parse a DGCNN/GIN ``<NAME>.txt``: a list of ``{label, tags, neighbours, line}`` per graph.

    Format: line 1 ``N``; per graph a line ``n l`` then ``n`` lines ``t m nbr_1 .. nbr_m`` (no node attributes
    are declared for these datasets, so extra numbers are an error).
    """
    lines = iter(sio.iter_lines(path))

    def next_line(what: str) -> tuple[int, list[str]]:
        for lineno, text in lines:
            if not text.strip():
                raise DataError(path, "empty record", line=lineno, expected=what)
            return lineno, text.split()
        raise DataError(path, "file ends early (truncated graph list)", expected=what)

    lineno, toks = next_line("the number of graphs")
    if len(toks) != 1:
        raise DataError(path, "malformed line", line=lineno, field="num_graphs", expected="one integer",
                        got=" ".join(toks))
    n_graphs = sio.parse_int(path, lineno, "num_graphs", toks[0])
    if n_graphs != num_graphs:
        raise DataError(path, "graph count differs from the declared one", line=lineno, field="num_graphs",
                        expected=str(num_graphs), got=n_graphs)
    graphs = []
    for g in range(n_graphs):
        hline, toks = next_line(f"graph {g} header 'n l'")
        if len(toks) != 2:
            raise DataError(path, "malformed graph header", line=hline, field=f"graph[{g}]",
                            expected="'num_nodes label'", got=" ".join(toks))
        n = sio.parse_int(path, hline, f"graph[{g}].num_nodes", toks[0])
        label = sio.parse_int(path, hline, f"graph[{g}].label", toks[1])
        if n < 1:
            raise DataError(path, "graph without nodes", line=hline, field=f"graph[{g}].num_nodes", expected=">= 1",
                            got=n)
        sio.check_range(path, hline, f"graph[{g}].label", label, 0, num_classes - 1)
        tags = np.empty(n, np.int32)
        nbrs: list[list[int]] = []
        for v in range(n):
            vline, toks = next_line(f"node {v} of graph {g}: 't m nbr_1 .. nbr_m'")
            if len(toks) < 2:
                raise DataError(path, "malformed node line", line=vline, field=f"graph[{g}].node[{v}]",
                                expected="'tag num_neighbours nbr_1 .. nbr_m'", got=" ".join(toks))
            tags[v] = sio.parse_int(path, vline, f"graph[{g}].node[{v}].tag", toks[0])
            m = sio.parse_int(path, vline, f"graph[{g}].node[{v}].num_neighbours", toks[1])
            if len(toks) != 2 + m:
                raise DataError(path, "neighbour count does not match the neighbour list", line=vline,
                                field=f"graph[{g}].node[{v}]", expected=f"{m} neighbour indices (no node attributes)",
                                got=len(toks) - 2)
            nb = [sio.parse_int(path, vline, f"graph[{g}].node[{v}].nbr", t) for t in toks[2:]]
            for u in nb:
                sio.check_range(path, vline, f"graph[{g}].node[{v}].nbr", u, 0, n - 1)
            if len(set(nb)) != len(nb):
                dup = next(u for u in nb if nb.count(u) > 1)
                raise DataError(path, "duplicate record: neighbour listed twice", line=vline,
                                field=f"graph[{g}].node[{v}].nbr", expected="distinct neighbours", got=dup)
            nbrs.append(nb)
        edges = {(v, u) for v in range(n) for u in nbrs[v]}
        for v, u in sorted(edges):
            if (u, v) not in edges:
                raise DataError(path, "edge listed from one end only", line=hline + 1 + v,
                                field=f"graph[{g}].node[{v}].nbr", expected=f"node {u} to list {v} as a neighbour",
                                got=u)
        graphs.append({"label": label, "tags": tags, "neighbours": nbrs, "line": hline})
    for lineno, text in lines:
        if text.strip():
            raise DataError(path, "unexpected content after the last graph", line=lineno,
                            expected=f"exactly {n_graphs} graphs", got=text)
    return graphs


def _read_index_file(path, n: int) -> np.ndarray:
    t = sio.read_int_table(path, ("graph_index",), bounds={"graph_index": (0, n - 1)})
    sio.check_unique(path, (t["graph_index"],), ("graph_index",), t["_line"])
    return t["graph_index"]


class JaxrecTuGraphs(sio.RawBuilder):
    """TU graph-classification datasets in DGCNN/GIN text format; schema in the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = TU_CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        seq = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description, license=_TU_LICENCE,
            features=tfds.features.FeaturesDict({
                "graph_id": np.int64, "label": np.int64, "num_nodes": np.int64,
                "senders": seq(), "receivers": seq(), "node_degrees": seq(), "node_tags": seq(),
                "test_fold": np.int32,
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        graphs = read_tu_file(self.raw_file(f"{cfg.prefix}/{cfg.prefix}.txt"), num_graphs=cfg.num_graphs,
                              num_classes=cfg.num_classes)
        n = len(graphs)
        test_fold = np.zeros(n, np.int32)
        fold_sizes = {}
        for k in range(1, cfg.num_folds + 1):
            test_rel = f"{cfg.prefix}/10fold_idx/test_idx-{k}.txt"
            train_rel = f"{cfg.prefix}/10fold_idx/train_idx-{k}.txt"
            test_idx = _read_index_file(self.raw_file(test_rel, "fold file"), n)
            train_idx = _read_index_file(self.raw_file(train_rel, "fold file"), n)
            both = np.intersect1d(test_idx, train_idx)
            if both.size or test_idx.size + train_idx.size != n:
                raise DataError(self.raw_folder() / train_rel, "fold files are not a partition of the graphs",
                                field="graph_index",
                                expected=f"train and test of fold {k} disjoint and covering 0..{n - 1}",
                                got={"overlap": int(both.size), "total": int(test_idx.size + train_idx.size)})
            again = test_idx[test_fold[test_idx] != 0]
            if again.size:
                raise DataError(self.raw_folder() / test_rel, "graph in two test folds", field="graph_index",
                                expected="each graph in exactly one test fold", got=int(again[0]))
            test_fold[test_idx] = k
            fold_sizes[k] = {"train": int(train_idx.size), "test": int(test_idx.size)}
        if (test_fold == 0).any():
            raise DataError(self.raw_folder() / f"{cfg.prefix}/10fold_idx", "graph in no test fold",
                            field="graph_index", expected="each graph in exactly one test fold",
                            got=int(np.nonzero(test_fold == 0)[0][0]))
        nodes = np.array([len(g["tags"]) for g in graphs])
        entries = np.array([sum(len(nb) for nb in g["neighbours"]) for g in graphs])
        self_loops = sum(1 for g in graphs for v, nb in enumerate(g["neighbours"]) if v in nb)
        labels = np.array([g["label"] for g in graphs])
        stats = {
            "users": None, "items": None, "interactions": None,
            "graphs": n, "classes": cfg.num_classes,
            "class_counts": np.bincount(labels, minlength=cfg.num_classes),
            "nodes": int(nodes.sum()), "nodes_mean": round(float(nodes.mean()), 2),
            "nodes_max": int(nodes.max()),
            "edges": int((entries.sum() + self_loops) // 2), "edges_mean": round(float(entries.mean() / 2), 2),
            "self_loops": self_loops, "folds": fold_sizes,
            "splits": {"full": {"graphs": n}},
        }
        self.set_metadata({"catalog_name": cfg.catalog_name, "num_classes": cfg.num_classes,
                           "num_folds": cfg.num_folds, "stats": stats, "drops": {}, "licence": _TU_LICENCE})
        return {"full": self._generate_examples(_tu_records(graphs, test_fold))}


def _tu_records(graphs: list[dict], test_fold: np.ndarray):
    for gid, g in enumerate(graphs):
        nb = g["neighbours"]
        deg = np.array([len(x) for x in nb], np.int32)
        senders = np.repeat(np.arange(len(nb), dtype=np.int32), deg)
        receivers = np.array([u for x in nb for u in x], np.int32)
        yield gid, {"graph_id": gid, "label": g["label"], "num_nodes": len(nb), "senders": senders,
                    "receivers": receivers, "node_degrees": deg, "node_tags": g["tags"],
                    "test_fold": test_fold[gid]}


# ============================================================================================ restricted pickle

class _CsrMatrixFields:
    """Inert stand-in for ``scipy.sparse.csr.csr_matrix``: unpickling only fills its ``__dict__``."""


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("scipy.sparse.csr", "csr_matrix"): _CsrMatrixFields,
    ("collections", "defaultdict"): collections.defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only the globals the Planetoid files need (see ``pickletools.dis`` of them).

    ``find_class`` is the only way a pickle reaches code; anything outside the allow-list raises a DataError
    naming the file and the refused ``module.name`` before it is looked up, let alone called. Python 2
    pickles are read with ``encoding="latin1"`` (numpy's raw array bytes).
    """

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(self.path, "refused pickle global (not on the allow-list)", field="pickle global",
                            expected="one of " + ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)),
                            got=f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise DataError(self.path, "refused persistent id in pickle", field="pickle persistent id",
                        expected="none", got=repr(pid)[:40])


def load_restricted_pickle(path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; malformed data is a DataError naming the file."""
    data = readers.require_file(path).read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, TypeError/ValueError from a bad reduce, ...
        raise DataError(path, f"malformed pickle ({type(e).__name__}: {e})", expected="a Planetoid pickle") from None


def _numeric_array(path, obj, what: str, ndim: int) -> np.ndarray:
    if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "biuf" or obj.ndim != ndim:
        got = f"{type(obj).__name__} {getattr(obj, 'dtype', '')} ndim={getattr(obj, 'ndim', '?')}"
        raise DataError(path, "unexpected pickled object", field=what, expected=f"a numeric {ndim}-d numpy array",
                        got=got)
    return obj


def _csr_to_dense(path, obj, num_features: int) -> np.ndarray:
    """Dense uint8 matrix from the pickled CSR fields; values must be 0/1."""
    if not isinstance(obj, _CsrMatrixFields):
        raise DataError(path, "unexpected pickled object", field="csr_matrix", expected="scipy.sparse.csr.csr_matrix",
                        got=type(obj).__name__)
    f = vars(obj)
    for k in ("_shape", "indptr", "indices", "data"):
        if k not in f:
            raise DataError(path, "csr_matrix without a required field", field=k,
                            expected="format/_shape/indptr/indices/data")
    if f.get("format", "csr") != "csr":
        raise DataError(path, "sparse matrix is not CSR", field="format", expected="csr", got=f.get("format"))
    shape = tuple(int(s) for s in f["_shape"])
    indptr = _numeric_array(path, f["indptr"], "indptr", 1).astype(np.int64)
    indices = _numeric_array(path, f["indices"], "indices", 1).astype(np.int64)
    data = _numeric_array(path, f["data"], "data", 1)
    rows, cols = shape
    if cols != num_features or indptr.size != rows + 1 or indptr[0] != 0 or indptr[-1] != indices.size \
            or data.size != indices.size or (np.diff(indptr) < 0).any():
        raise DataError(path, "inconsistent CSR matrix", field="_shape/indptr/indices/data",
                        expected=f"[rows, {num_features}] with consistent indptr", got=shape)
    if indices.size and (indices.min() < 0 or indices.max() >= cols):
        raise DataError(path, "feature index outside the matrix", field="indices", expected=f"0..{cols - 1}",
                        got=int(indices.max()))
    if not np.isin(data, (0, 1)).all():
        raise DataError(path, "non-binary feature value", field="data", expected="0 or 1",
                        got=float(data[~np.isin(data, (0, 1))][0]))
    dense = np.zeros(shape, np.uint8)
    dense[np.repeat(np.arange(rows), np.diff(indptr)), indices] = data.astype(np.uint8)
    return dense


def _one_hot_labels(path, obj, num_classes: int) -> np.ndarray:
    y = _numeric_array(path, obj, "labels", 2)
    if y.shape[1] != num_classes:
        raise DataError(path, "label matrix width", field="labels", expected=f"{num_classes} columns", got=y.shape)
    bad = np.nonzero(~(np.isin(y, (0, 1)).all(1) & (y.sum(1) == 1)))[0]
    if bad.size:
        raise DataError(path, "label row is not one-hot", field=f"labels[{int(bad[0])}]",
                        expected=f"exactly one 1 among {num_classes}", got=y[bad[0]].tolist())
    return y.argmax(1).astype(np.int64)


# ============================================================================================== Planetoid Cora

@dataclasses.dataclass(eq=False, kw_only=True)
class PlanetoidConfig(sio.RawConfig):
    dataset: str = "cora"
    num_nodes: int = 0
    num_features: int = 0
    num_classes: int = 0
    num_train: int = 0
    num_val: int = 0
    num_test: int = 0
    catalog_name: str = ""
    source_stats: dict = dataclasses.field(default_factory=dict)


PLANETOID_CONFIGS = [
    PlanetoidConfig(name="cora", description="Cora citation graph, Planetoid split (ind.cora.*)", dataset="cora",
                    num_nodes=2708, num_features=1433, num_classes=7, num_train=140, num_val=500, num_test=1000,
                    raw_subdir="cora_planetoid", checksums=_CORA_SHA256, catalog_name="cora_planetoid",
                    source_stats={"nodes": 2708, "features": 1433, "classes": 7, "adjacency_entries": 10858,
                                  "repeated_neighbours": 302, "edges": 5278, "self_loops": 0,
                                  "train": 140, "validation": 500, "test": 1000}),
]


def read_planetoid(cfg: PlanetoidConfig, raw_file) -> dict:
    """Load and assemble the Planetoid pickles (GCN ``load_data`` order). ``raw_file(rel)`` verifies paths."""
    p = lambda s: raw_file(f"data/ind.{cfg.dataset}.{s}")  # noqa: E731
    n, f, c = cfg.num_nodes, cfg.num_features, cfg.num_classes
    x_path, y_path, allx_path, ally_path, tx_path, ty_path, g_path, idx_path = (
        p("x"), p("y"), p("allx"), p("ally"), p("tx"), p("ty"), p("graph"), p("test.index"))
    x = _csr_to_dense(x_path, load_restricted_pickle(x_path), f)
    allx = _csr_to_dense(allx_path, load_restricted_pickle(allx_path), f)
    tx = _csr_to_dense(tx_path, load_restricted_pickle(tx_path), f)
    y = _one_hot_labels(y_path, load_restricted_pickle(y_path), c)
    ally = _one_hot_labels(ally_path, load_restricted_pickle(ally_path), c)
    ty = _one_hot_labels(ty_path, load_restricted_pickle(ty_path), c)
    for path, a, b, what in ((x_path, x, allx, "x"), (y_path, y, ally, "y")):
        if a.shape[0] != cfg.num_train or not np.array_equal(a, b[:cfg.num_train]):
            raise DataError(path, f"{what} is not the first {cfg.num_train} rows of all{what}", field=what,
                            expected=f"{cfg.num_train} rows equal to all{what}[:{cfg.num_train}]", got=a.shape)
    if allx.shape[0] != ally.shape[0] or tx.shape[0] != ty.shape[0] or tx.shape[0] != cfg.num_test:
        raise DataError(tx_path, "row counts disagree", field="rows",
                        expected=f"allx/ally equal, tx/ty = {cfg.num_test}",
                        got=(allx.shape[0], ally.shape[0], tx.shape[0], ty.shape[0]))
    if allx.shape[0] + tx.shape[0] != n:
        raise DataError(allx_path, "node count", field="rows", expected=f"allx + tx = {n} rows",
                        got=allx.shape[0] + tx.shape[0])
    t = sio.read_int_table(idx_path, ("node_id",), bounds={"node_id": (0, n - 1)})
    sio.check_unique(idx_path, (t["node_id"],), ("node_id",), t["_line"])
    test_index = t["node_id"]
    if test_index.size != cfg.num_test or not np.array_equal(np.sort(test_index), np.arange(allx.shape[0], n)):
        raise DataError(idx_path, "test.index is not a permutation of the test node range", field="node_id",
                        expected=f"{cfg.num_test} distinct ids covering {allx.shape[0]}..{n - 1}",
                        got=(int(test_index.size), int(test_index.min()), int(test_index.max())))
    features = np.concatenate([allx, np.zeros_like(tx)])
    labels = np.concatenate([ally, np.zeros_like(ty)])
    features[test_index] = tx
    labels[test_index] = ty

    graph = load_restricted_pickle(g_path)
    if not isinstance(graph, dict):
        raise DataError(g_path, "unexpected pickled object", field="graph", expected="dict node -> neighbour list",
                        got=type(graph).__name__)
    drops = readers.DropReport()
    adj: set[tuple[int, int]] = set()
    entries = 0
    self_loops = 0
    for node, nbrs in graph.items():
        if not isinstance(node, int) or not isinstance(nbrs, list):
            raise DataError(g_path, "malformed adjacency entry", field=f"graph[{node!r}]",
                            expected="int node -> list of int neighbours", got=type(nbrs).__name__)
        sio.check_range(g_path, None, "graph node", node, 0, n - 1)
        seen = set()
        for u in nbrs:
            if not isinstance(u, int):
                raise DataError(g_path, "malformed neighbour", field=f"graph[{node}]", expected="an int node id", got=u)
            sio.check_range(g_path, None, f"graph[{node}] neighbour", u, 0, n - 1)
            entries += 1
            if u in seen:
                drops.add("graph", "repeated neighbour entry (collapsed)", where=f"graph[{node}] -> {u}")
                continue
            seen.add(u)
            self_loops += u == node
            adj.add((node, u))
    one_sided = [(a, b) for a, b in adj if (b, a) not in adj]
    for a, b in one_sided:
        drops.add("graph", "edge listed from one end only (symmetrised)", where=f"graph[{a}] -> {b}")
        adj.add((b, a))
    edges = np.array(sorted(adj), np.int64).reshape(-1, 2)
    drops.log(cfg.catalog_name)
    return {"features": features, "labels": labels, "test_index": test_index, "edges": edges,
            "adjacency_entries": entries, "self_loops": self_loops, "drops": drops}


class JaxrecPlanetoid(sio.RawBuilder):
    """Planetoid citation graphs (``ind.<name>.*`` pickles) as one record per node; schema in the module doc."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First jaxrec release."}
    BUILDER_CONFIGS = PLANETOID_CONFIGS

    def _info(self) -> tfds.core.DatasetInfo:
        seq = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description, license=_CORA_LICENCE,
            features=tfds.features.FeaturesDict({
                "node_id": np.int64, "label": np.int64, "feature_indices": seq(), "neighbors": seq(),
                "is_train": np.bool_, "is_val": np.bool_, "is_test": np.bool_,
            }),
            metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        g = read_planetoid(cfg, self.raw_file)
        n = cfg.num_nodes
        masks = np.zeros((3, n), bool)
        masks[0, :cfg.num_train] = True
        masks[1, cfg.num_train:cfg.num_train + cfg.num_val] = True
        masks[2, g["test_index"]] = True
        if (masks.sum(0) > 1).any():
            raise DataError(self.raw_folder(), "Planetoid train/val/test ranges overlap", field="masks",
                            expected="disjoint train, val and test nodes")
        senders, receivers = g["edges"][:, 0], g["edges"][:, 1]
        offsets = np.searchsorted(senders, np.arange(n + 1))
        undirected = int((senders < receivers).sum() + (senders == receivers).sum())
        stats = {
            "users": None, "items": None, "interactions": None,
            "nodes": n, "features": cfg.num_features, "classes": cfg.num_classes,
            "class_counts": np.bincount(g["labels"], minlength=cfg.num_classes),
            "adjacency_entries": g["adjacency_entries"], "edges": undirected, "directed_edges": int(len(senders)),
            "self_loops": g["self_loops"], "isolated_nodes": int((np.diff(offsets) == 0).sum()),
            "feature_nnz": int(g["features"].sum()),
            "splits": {"full": {"nodes": n}, "train": {"nodes": int(masks[0].sum())},
                       "validation": {"nodes": int(masks[1].sum())}, "test": {"nodes": int(masks[2].sum())}},
        }
        self.set_metadata({"catalog_name": cfg.catalog_name, "num_nodes": n, "num_features": cfg.num_features,
                           "num_classes": cfg.num_classes, "stats": stats, "drops": g["drops"].as_dict(),
                           "licence": _CORA_LICENCE})

        def records(node_ids):
            for v in node_ids:
                v = int(v)
                yield v, {"node_id": v, "label": g["labels"][v],
                          "feature_indices": np.nonzero(g["features"][v])[0].astype(np.int32),
                          "neighbors": receivers[offsets[v]:offsets[v + 1]].astype(np.int32),
                          "is_train": masks[0, v], "is_val": masks[1, v], "is_test": masks[2, v]}

        return {"full": self._generate_examples(records(range(n))),
                "train": self._generate_examples(records(np.nonzero(masks[0])[0])),
                "validation": self._generate_examples(records(np.nonzero(masks[1])[0])),
                "test": self._generate_examples(records(np.nonzero(masks[2])[0]))}


def planetoid_arrays(source, num_features: int = 1433) -> dict[str, np.ndarray]:
    """Dense full-graph arrays from the ``full`` split of ``cora_planetoid`` (records in any order).

    Returns ``features uint8 [N, F]``, ``labels int64 [N]``, ``senders``/``receivers int32 [E2]`` (both
    directions of each undirected edge), ``train_mask``/``val_mask``/``test_mask bool [N]``.
    """
    n = len(source)
    features = np.zeros((n, num_features), np.uint8)
    labels = np.zeros(n, np.int64)
    masks = np.zeros((3, n), bool)
    senders, receivers = [], []
    for i in range(n):
        r = source[i]
        v = int(r["node_id"])
        features[v, r["feature_indices"]] = 1
        labels[v] = r["label"]
        masks[:, v] = (r["is_train"], r["is_val"], r["is_test"])
        senders.append(np.full(len(r["neighbors"]), v, np.int32))
        receivers.append(np.asarray(r["neighbors"], np.int32))
    return {"features": features, "labels": labels, "senders": np.concatenate(senders),
            "receivers": np.concatenate(receivers), "train_mask": masks[0], "val_mask": masks[1],
            "test_mask": masks[2]}


def dataset_stats(builder) -> dict:
    """Split sizes plus the statistics stored at preparation (graphs/nodes/edges/classes/folds, drops)."""
    return sio.builder_stats(builder)


def _make_builder(cls, config_name: str):
    def make(raw_dir: str | None, data_dir: str):
        return cls(config=config_name, data_dir=data_dir, raw_root=raw_dir)
    return make


for _cls, _cfgs, _lic in ((JaxrecTuGraphs, TU_CONFIGS, _TU_LICENCE),
                          (JaxrecPlanetoid, PLANETOID_CONFIGS, _CORA_LICENCE)):
    for _cfg in _cfgs:
        catalog.register(catalog.DatasetSpec(
            name=_cfg.catalog_name, kind="graph", make_builder=_make_builder(_cls, _cfg.name),
            raw_subdir=_cfg.raw_subdir, licence=_lic, source_stats=_cfg.source_stats, stats_fn=dataset_stats,
            description=_cfg.description))
del _cls, _cfgs, _lic, _cfg
