"""SASRec baselines for cross-domain sequential recommendation on C2DSR's data and evaluation: task
``cdsr_sasrec``.

jaxrec's SASRec (:mod:`jaxrec.models.sasrec`, model ``sasrec``: tied input/output item table, SASRec-pytorch
blocks) trained with :class:`jaxrec.models.sasrec.SeqRecTask`'s loss (full softmax cross-entropy at every
position with a target, ``kernels.losses.softmax_cross_entropy``) and evaluated exactly as C2DSR: the same
:class:`jaxrec.data.c2dsr_transforms.C2DSREvalTransform` batches (same ``gt``, ``is_y``, the same 999 fixed
negatives per example, the same full-ranking candidates), ranked by :func:`jaxrec.models.c2dsr.rank_outputs`
(C2DSR's ``1 + #{s > s_gt + 1e-5}`` rule) and averaged by :func:`jaxrec.models.c2dsr.accumulate_by_domain`
(metric names ``X/mrr`` ..., ``X/full/...``, ``Y/...``, ``all/...``).

``task.mode``:

* ``"mixed"``: one SASRec over the mixed (X and Y interleaved) sequence, vocabulary ``1..NX+NY`` (catalogue
  ids; 0 = PAD); at evaluation the last state scores the *target domain's* items (``scores_x`` = columns
  ``1..NX``, ``scores_y`` = ``NX+1..NX+NY``);
* ``"x"`` / ``"y"``: single-domain SASRec, vocabulary the domain's items (domain-local id + 1), trained on the
  domain's own subsequence of each training line and evaluated only on that domain's targets (the other
  domain's rows are excluded: its ``Y/`` (``X/``) metrics are NaN, ``all/`` = the domain's).

Inputs (``T = model.max_len``, as C2DSR at most ``T - 1`` inputs): training line ``s`` = the record's items +
target; mixed: the last ``T`` items of ``s``, single-domain: the last ``T`` items of the domain's subsequence of
``s``; inputs ``s[:-1]``, targets ``s[1:]`` (every position supervised), left-padded to ``T``. Evaluation: the
mixed input is the eval batch's ``seq`` (the last ``T - 1`` history items, C2DSR's window); the single-domain
input is the last ``T - 1`` items of the domain's subsequence of the *whole* history (key ``dom_seq``, added to
C2DSR's eval batch by :class:`CDSREvalTransform`; the other keys are C2DSR's, unchanged).

Training lines (``task.train_lines``): ``"kept"`` [default] the lines C2DSR trains on (the official skip rule,
:class:`jaxrec.data.c2dsr_transforms.KeptRecords`: the same epoch of ``ceil(kept / B)`` steps); ``"all"`` every
record of the ``train`` split (single-domain lines without two items of the domain give zero-weight rows).
Other config keys: ``model.*`` (SASRec attributes except ``num_items``), ``task.y_final_strict`` [True] (the
skip rule), ``eval.num_negatives`` [999], ``eval.negatives_seed`` [2040], ``eval.exclude_history`` [False],
``eval.full_ranking`` [True].
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import jax.numpy as jnp
import numpy as np

from jaxrec.models.c2dsr import accumulate_by_domain, eval_protocol, rank_outputs, train_protocol, two_domain_sizes
from jaxrec.models.sasrec import PAD_ID, SeqRecTask
from jaxrec.registry import register_task

MODES = ("mixed", "x", "y")


def line_ids(seq_c2dsr, mode: str, num_x: int) -> np.ndarray:
    """A chronological C2DSR-id line -> the SASRec ids of ``mode`` (mixed: ``id + 1``; x: the X items,
    ``id + 1``; y: the Y items, ``id - NX + 1``)."""
    s = np.asarray(seq_c2dsr, np.int64)
    if mode == "mixed":
        return s + 1
    if mode == "x":
        return s[s < num_x] + 1
    return s[s >= num_x] - num_x + 1


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((width,), np.int32)
    a = a[-width:] if width else a[:0]
    if a.shape[0]:
        out[width - a.shape[0]:] = a
    return out


@dataclasses.dataclass(frozen=True)
class CDSRTrainTransform(grain.transforms.Map):
    """Catalogue ``train`` records -> SASRec batches ``input_ids, target_ids [B, T]`` int32 (0 = PAD), ``mask
    [B, T]`` bool, ``user_id [B]`` (see the module docstring)."""

    mode: str
    num_x: int
    max_len: int

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        from jaxrec.data import c2dsr_transforms as ct

        B, T = len(records), self.max_len
        inp = np.zeros((B, T), np.int32)
        tgt = np.zeros((B, T), np.int32)
        for b, r in enumerate(records):
            s = line_ids(ct.record_sequence(r), self.mode, self.num_x)[-T:]
            if s.shape[0] >= 2:
                inp[b] = _left_pad(s[:-1], T)
                tgt[b] = _left_pad(s[1:], T)
        return {"input_ids": inp, "target_ids": tgt, "mask": tgt != PAD_ID,
                "user_id": np.array([int(r["user_id"]) for r in records], np.int32)}


class CDSREvalTransform(grain.transforms.Map):
    """C2DSR's evaluation batches (:class:`jaxrec.data.c2dsr_transforms.C2DSREvalTransform`, unchanged) plus
    ``dom_seq [B, T]``: SASRec ids of the last ``T - 1`` items of ``mode``'s subsequence of the whole history
    (single-domain modes only)."""

    def __init__(self, base, mode: str):
        self.base = base
        self.mode = mode

    def map(self, rec: dict) -> dict:
        return {k: v[0] for k, v in self.map_batch([rec]).items()}

    def map_batch(self, records: Sequence[dict]) -> dict:
        from jaxrec.data import c2dsr_transforms as ct

        out = self.base.map_batch(records)
        if self.mode != "mixed":
            T = self.base.max_len
            out["dom_seq"] = np.stack([
                _left_pad(line_ids(ct.to_c2dsr_ids(r["items"]), self.mode, self.base.num_x)[-(T - 1):], T)
                for r in records]) if records else np.zeros((0, T), np.int32)
        return out


class CDSRSASRecTask(SeqRecTask):
    """SASRec baselines on C2DSR's data and evaluation (module docstring). The training loss is
    :meth:`SeqRecTask.loss`; evaluation is C2DSR's."""

    name = "cdsr_sasrec"

    def __init__(self, cfg, data_info, train_records=None):
        from jaxrec import registry
        from jaxrec.config import ConfigError
        from jaxrec.data import c2dsr_transforms as ct

        self.cfg = cfg
        self.data_info = data_info
        self.num_x, self.num_y = two_domain_sizes(data_info, "cdsr_sasrec")
        task = cfg.task
        self.mode = task.get("mode", "mixed")
        if self.mode not in MODES:
            raise ConfigError(f"config key 'task.mode': expected one of {MODES}, got {self.mode!r}")
        self.train_lines = task.get("train_lines", "kept")
        if self.train_lines not in ("kept", "all"):
            raise ConfigError(f"config key 'task.train_lines': expected 'kept' or 'all', got {self.train_lines!r}")
        self.num_items = {"mixed": self.num_x + self.num_y, "x": self.num_x, "y": self.num_y}[self.mode]
        model_kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
        self.model = registry.get_model(cfg.model.name)(num_items=self.num_items, **model_kwargs)
        self.max_len = int(cfg.model.max_len)
        if self.max_len < 2:
            raise ConfigError(f"config key 'model.max_len': expected >= 2, got {self.max_len}")
        self.loss_type = task.get("loss", "softmax")
        if self.loss_type not in ("softmax", "sampled_softmax", "bce"):
            raise ConfigError(f"config key 'task.loss': expected 'softmax', 'sampled_softmax' or 'bce', "
                              f"got {self.loss_type!r}")
        self.num_loss_negatives = int(task.get("num_loss_negatives", 1))
        # corrupt_seed only seeds KeptRecords' padding choice here (lambda_ / loss_positions are C2DSR's own)
        _, _, self.corrupt_seed, self.y_final_strict = train_protocol(task)
        ev = cfg.eval
        self.num_negatives, self.negatives_seed, self.exclude_history, self.full_ranking = eval_protocol(ev)
        self.table = None
        if self.train_lines == "kept":
            if train_records is None:
                from jaxrec.models.c2dsr import load_train_records

                train_records = load_train_records(data_info)
            self.table = ct.build_train_table(train_records, self.num_x, self.num_y, self.max_len,
                                              self.corrupt_seed, self.y_final_strict)

    # ----------------------------------------------------------------------------------- data
    def train_source(self, train_split):
        """Engine hook: C2DSR's kept lines (``train_lines="kept"``) or the whole split."""
        if self.table is None:
            return train_split
        from jaxrec.data import c2dsr_transforms as ct

        return ct.KeptRecords(train_split, self.table, int(self.cfg.train.batch_size), seed=self.corrupt_seed)

    def train_transform(self):
        return CDSRTrainTransform(self.mode, self.num_x, self.max_len)

    def eval_transform(self, split: str):
        from jaxrec.data import c2dsr_transforms as ct

        base = ct.C2DSREvalTransform(self.num_x, self.num_y, self.max_len, self.num_negatives,
                                     self.negatives_seed, split)
        return CDSREvalTransform(base, self.mode)

    # ----------------------------------------------------------------------------------- evaluation
    def input_ids(self, batch):
        """SASRec inputs ``[B, T]`` of an evaluation batch."""
        if self.mode != "mixed":
            return jnp.asarray(batch["dom_seq"], jnp.int32)
        seq = jnp.asarray(batch["seq"], jnp.int32)
        return jnp.where(seq == self.num_x + self.num_y, PAD_ID, seq + 1)

    def domain_scores(self, params, model_state, batch):
        """``(scores_x [B, NX], scores_y [B, NY])`` in C2DSR's domain-local ids. Single-domain modes: the
        other domain's scores are zeros (its rows are excluded from the metrics)."""
        s = self.scores(params, model_state, self.input_ids(batch))  # [B, V + 1], column 0 = PAD
        b = s.shape[0]
        if self.mode == "mixed":
            return s[:, 1:self.num_x + 1], s[:, self.num_x + 1:]
        if self.mode == "x":
            return s[:, 1:], jnp.zeros((b, self.num_y), s.dtype)
        return jnp.zeros((b, self.num_x), s.dtype), s[:, 1:]

    def evaluate(self, params, model_state, batch):
        sx, sy = self.domain_scores(params, model_state, batch)
        return rank_outputs(sx, sy, batch, num_negatives=self.num_negatives, full_ranking=self.full_ranking,
                            exclude_history=self.exclude_history)

    def accumulate(self, acc, outputs, batch) -> None:
        if self.mode != "mixed":
            valid = np.asarray(batch["valid"], bool) if "valid" in batch else np.ones(np.shape(batch["is_y"]), bool)
            is_y = np.asarray(batch["is_y"], bool)
            batch = {**batch, "valid": valid & (is_y if self.mode == "y" else ~is_y)}
        accumulate_by_domain(acc, outputs, batch)


@register_task("cdsr_sasrec")
def make_cdsr_sasrec_task(cfg, data_info) -> CDSRSASRecTask:
    return CDSRSASRecTask(cfg, data_info)
