"""The MARM cache benchmark's bookkeeping: grids, and resuming the quality section from its rows file."""

import json

import pytest
from helpers import load_script

from jaxrec.cache import bench

pytestmark = pytest.mark.usefixtures("fast_compile")

STREAM = dict(num_users=16, events_per_user=6, num_items=12, num_categories=3, pattern_window=4, signal=4.0)


def test_grids_are_consistent():
    assert set(bench.GRIDS) == {"small", "medium", "full"}
    for g in bench.GRIDS.values():
        for mode, L, n in g["quality"]:
            assert mode in ("kv", "kv_fresh1", "h", "none") and L >= 1 and n >= 1
    with pytest.raises(ValueError, match="grid must be one of"):
        bench.run(grid="huge", out_dir=None, sections=())


def test_quality_rows_resume(tmp_path):
    rows_path = tmp_path / "q.jsonl"
    kw = dict(d=4, eval_rounds=2, epochs=1, batch=8, seeds=(0,), rows_path=rows_path)
    logs = []
    first = bench.quality([("kv_fresh1", 1, 4)], STREAM, log=logs.append, **kw)
    assert len(first) == 1 and rows_path.exists()
    saved = [json.loads(x) for x in rows_path.read_text().splitlines()]
    assert saved == [json.loads(json.dumps(first[0], default=float))]
    # a cut last line (a kill mid-write) is reported and that row recomputed; finished rows are reused
    with open(rows_path, "a") as f:
        f.write('{"seed": 0, "mode": "kv"')
    logs.clear()
    again = bench.quality([("kv_fresh1", 1, 4)], STREAM, log=logs.append, **kw)
    assert again[0]["gauc"] == first[0]["gauc"] and again[0]["seconds"] == first[0]["seconds"]
    assert any("unreadable row" in m for m in logs) and any("from" in m for m in logs)


def test_latency_rows_time_the_compile_and_the_store_bytes():
    logs = []
    rows = bench.latency([("kv", 1, 4, 8), ("none", 1, 4, 8)], batch=4, repeats=2, log=logs.append)
    assert [r["mode"] for r in rows] == ["kv", "none"]
    for r in rows:
        assert r["compile_s"] > 0 and r["median_ms"] > 0 and r["requests_per_s"] > 0
    kv = rows[0]
    assert kv["store_value_bytes"] == kv["store_value_bytes_formula"] and kv["hit_rate"] == 1.0
    assert "store_value_bytes" not in rows[1]  # no cache without one
    assert len(logs) == 2 and "compile" in logs[0] and "kv L=1 n=4 d=8" in logs[0]


def test_marm_tables_render_means_over_seeds_and_flops_ratios(tmp_path, capsys):
    tables = load_script("benchmarks/marm_tables.py")
    res = {"grid": {"flops_d": [8], "flops_n": [4]}, "flops": bench.flops_grid((1, 2), (4,), (8,)),
           "flops_check": [dict(mode="kv", L=1, n=4, d=8, analytic=10.0, traced_dot=10.0, xla=None,
                                dot_over_analytic=1.0, xla_over_analytic=None)], "latency": [],
           "quality": [dict(seed=s, mode="kv", L=2, n=4, d=8, auc=a, gauc=g, flops_per_sample=10.0,
                            cache_values_per_user=64, gauc_ceiling=0.9, staleness_gauc_cost=c)
                       for s, a, g, c in ((0, 0.7, 0.6, -0.01), (1, 0.8, 0.62, 0.01))]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    assert tables.main([str(path), "--d", "8", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "| kv | 2 | 4 | 2 | 10 | 64 | 0.7500 ± 0.0707 | 0.6100 ± 0.0141 | 0.0000 ± 0.0141 |" in out
    by = {(r["mode"], r["L"]): r for r in res["flops"] if r["n"] == 4 and r["d"] == 8}
    row = next(x for x in out.splitlines() if x.startswith("| 2 | "))  # the flops table's L = 2 row
    assert row.endswith(f"| {by['none', 2]['flops'] / by['kv', 2]['flops']:.1f} | "
                        f"{by['kv', 2]['cache_values_per_user']:,} |")
    assert "(no latency rows)" in out and "| kv | 1 | 4 | 8 | 10 | 10 | — | — |" in out
    assert "XLA cost_analysis / analytic not available" in out
    # a run in progress: its quality rows file (a cut last line is skipped), the quality table only
    rows = tmp_path / "r.quality.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in res["quality"]) + '{"seed": 2, "mode": "kv"')
    assert tables.main([str(rows)]) == 0
    part = capsys.readouterr().out
    assert "| kv | 2 | 4 | 2 | 10 | 64 | 0.7500 ± 0.0707 |" in part and "FLOPs of the sequence module" not in part
    assert tables.main([str(rows), "--seeds", "1"]) == 0
    assert "| kv | 2 | 4 | 1 | 10 | 64 | 0.8000 | 0.6200 | 0.0100 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no flops rows"):
        tables.main([str(path), "--d", "16"])
    with pytest.raises(SystemExit, match="unknown table"):
        tables.main([str(path), "--tables", "speed"])


def test_finished_sections_are_reused_after_an_interruption(tmp_path, monkeypatch):
    grid = dict(bench.SMALL, check=[("kv", 1, 4, 8)], latency=[("kv", 1, 4, 8)], latency_batch=4,
                latency_repeats=2)
    monkeypatch.setitem(bench.GRIDS, "tiny_test", grid)
    calls = []  # the measurements themselves are tested above; here only what is measured and what is reused
    monkeypatch.setattr(bench, "flops_check", lambda c: calls.append("check") or [{"mode": c[0][0], "x": 1.5}])
    monkeypatch.setattr(bench, "latency",
                        lambda c, b, r, log=None: calls.append("latency") or [{"mode": c[0][0], "repeats": r}])
    kw = dict(out_dir=tmp_path, name="t", sections=("flops", "check", "latency"), grid="tiny_test")
    logs = []
    first = bench.run(log=logs.append, **kw)
    assert calls == ["check", "latency"] and (tmp_path / "t.sections.json").exists()
    calls.clear()
    logs.clear()
    again = bench.run(log=logs.append, **kw)
    assert calls == [] and again["latency"] == first["latency"] == [{"mode": "kv", "repeats": 2}]
    assert again["flops_check"] == first["flops_check"] == [{"mode": "kv", "x": 1.5}]
    assert sum("from" in m and "t.sections.json" in m for m in logs) == 2
    assert set(again["sections_reused"]) == {"flops_check", "latency"} and "sections_reused" not in first
    # another latency setting: that section is measured again, the cross-check is still reused
    monkeypatch.setitem(bench.GRIDS, "tiny_test", dict(grid, latency_repeats=3))
    logs.clear()
    bench.run(log=logs.append, **kw)
    assert calls == ["latency"] and any("another setting" in m for m in logs)
    # an unreadable file is reported and everything measured again
    (tmp_path / "t.sections.json").write_text("{cut")
    calls.clear()
    logs.clear()
    bench.run(log=logs.append, **kw)
    assert calls == ["check", "latency"] and any("unreadable" in m for m in logs)
