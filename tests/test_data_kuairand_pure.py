"""KuaiRand-Pure impressions builder: crafted files, reader errors, and the real CSVs vs SOURCE.md."""

import dataclasses

import pytest
import tensorflow_datasets as tfds

from jaxrec.data import catalog, readers
from jaxrec.data.builders import kuairand_pure as kp
from jaxrec.data.errors import DataError

tfds.disable_progress_bar()

LOG_HEADER = ",".join(kp.LOG_COLUMNS)
USER_HEADER = "user_id," + ",".join(kp.USER_FEATURE_NAMES)
VIDEO_HEADER = "video_id," + ",".join(kp.VIDEO_FEATURE_NAMES) + ",tag"


def _log_row(user=0, video=0, date=20220425, hourmin=1800, time_ms=1650882384975, click=0, like=0, long_view=0,
             play=1000, duration=20000, tab=1, is_rand=0):
    vals = [user, video, date, hourmin, time_ms, click, like, 0, 0, 0, 0, long_view, play, duration, 0, 0, 0,
            is_rand, tab]
    return ",".join(map(str, vals))


def _user_row(uid, degree="full_active", onehot4="1.0"):
    feats = [degree, 0, -124, 1, 514, "500+", 150, '"[100,1k)"', 34, '"[30,60)"', 799, "730+", 1, 1, 29, 949,
             onehot4, 0, 0, 14, 135, 6, 3, 0, "0.0", "1.0", "0.0", "0.0", "0.0", "0.0"]
    return ",".join(map(str, [uid] + feats))


def _video_row(vid, tag="39", duration="87433.0"):
    feats = [7349781 + vid, "NORMAL" if vid else "AD", "2022-04-10", "LongImport", "0.0", duration, "720.0", "1280.0",
             9155697141, "9.0"]
    return ",".join(map(str, [vid] + feats + [f'"{tag}"' if "," in tag else tag]))


_LOG = [
    _log_row(0, 1, 20220425, 1800, click=1, long_view=1, play=5000),
    _log_row(0, 1, 20220425, 1800, click=1, long_view=1, play=5000),  # exact duplicate: dropped, counted
    _log_row(0, 2, 20220505, 0, time_ms=1651700000000, tab=4),
    _log_row(1, 0, 20220507, 2300, time_ms=1651935600000, like=1, click=1),
    _log_row(2, 2, 20220508, 900, time_ms=1651971600000),
]


def _write(root, log=None, users=None, videos=None):
    files = {
        kp.LOG_FILE: "\n".join([LOG_HEADER] + (_LOG if log is None else log)) + "\n",
        kp.USER_FILE: "\n".join([USER_HEADER] + (users or [_user_row(0), _user_row(1, "high_active", ""),
                                                            _user_row(2, "UNKNOWN")])) + "\n",
        kp.VIDEO_FILE: "\n".join([VIDEO_HEADER] + (videos or [_video_row(0, ""), _video_row(1, "20,43"),
                                                              _video_row(2, "7", duration="")])) + "\n",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {rel: readers.sha256_file(root / rel) for rel in files}


def _config(root, name="toy", **changes):
    return kp.make_config(name, num_users=3, num_videos=3, **changes) if root is None else dataclasses.replace(
        kp.make_config(name, num_users=3, num_videos=3, **changes), checksums=_write(root))


def _dry(root, cfg, tmp_path):
    b = kp.JaxrecKuaiRandPure(config=cfg, raw_dir=root, data_dir=str(tmp_path / "t"))
    return b, b._split_generators(None)


def test_mock_data_schema(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        b = kp.JaxrecKuaiRandPure(data_dir=str(tmp_path))
        b.download_and_prepare()
        rec = b.as_data_source("train")[0]
    assert rec["labels"].shape == (12,) and rec["user_features"].shape == (30,)
    assert rec["video_features"].shape == (10,) and rec["video_tags"].ndim == 1
    assert {"impression_id", "user_id", "video_id", "time_ms", "date", "hour", "tab", "is_rand"} < set(rec)


def test_build_crafted(tmp_path):
    root = tmp_path / "raw"
    cfg = _config(root)
    b = kp.JaxrecKuaiRandPure(config=cfg, raw_dir=root, data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 1, "valid": 1, "test": 2}
    r = b.as_data_source("train")[0]
    assert (int(r["impression_id"]), int(r["user_id"]), int(r["video_id"])) == (2, 0, 1)
    assert (int(r["date"]), int(r["hour"]), int(r["tab"]), int(r["is_rand"])) == (20220425, 18, 1, 0)
    labels = dict(zip(kp.LABEL_NAMES, r["labels"].tolist()))
    assert labels["is_click"] == 1 and labels["long_view"] == 1 and labels["play_time_ms"] == 5000
    assert labels["duration_ms"] == 20000 and labels["is_like"] == 0
    md = b.info.metadata
    uf = dict(zip(kp.USER_FEATURE_NAMES, r["user_features"].tolist()))
    assert md["vocabularies"]["user_active_degree"] == ["UNKNOWN", "full_active", "high_active"]
    assert uf["user_active_degree"] == 1 and uf["is_live_streamer"] == -124 and uf["onehot_feat4"] == 1
    assert md["vocabularies"]["fans_user_num_range"] == ["[100,1k)"]
    vf = dict(zip(kp.VIDEO_FEATURE_NAMES, r["video_features"].tolist()))
    assert vf["upload_dt"] == 20220410 and vf["video_duration"] == 87433 and vf["server_width"] == 720
    assert md["vocabularies"]["video_type"][vf["video_type"]] == "NORMAL"
    assert r["video_tags"].tolist() == [20, 43]
    test = b.as_data_source("test")
    recs = {int(test[i]["impression_id"]): test[i] for i in range(len(test))}
    assert recs[6]["video_tags"].tolist() == [7] and recs[6]["video_features"][5] == kp.MISSING  # empty duration
    assert recs[5]["user_features"][kp.USER_FEATURE_NAMES.index("onehot_feat4")] == kp.MISSING
    st = kp.dataset_stats(b)
    assert st["file_stats"]["rows"] == 5 and st["interactions"] == 4
    dup = st["drops"][kp.LOG_FILE]["exact duplicate row (all 19 columns equal)"]
    assert dup == {"count": 1, "examples": ["line 3"]}
    assert st["splits"]["test"]["positive_rates"]["is_like"] == 0.5
    assert kp.dataset_stats(tfds.builder_from_directory(b.data_dir))["drops"] == st["drops"]


def test_windows_and_duplicate_policy(tmp_path):
    root = tmp_path / "raw"
    b, gens = _dry(root, _config(root, "w", train_dates=(20220425, 20220425), valid_dates=None,
                                 test_dates=(20220508, 20220508)), tmp_path)
    assert set(gens) == {"train", "test"}
    (drop,) = [v for k, v in b.info.metadata["drops"][kp.LOG_FILE].items() if "window" in k]
    assert drop == {"count": 2, "examples": ["line 4"]}
    with pytest.raises(DataError, match="duplicate record") as e:
        _dry(root, _config(root, "d", on_duplicate="error"), tmp_path)
    assert e.value.line == 3 and "same as line 2" in str(e.value)
    with pytest.raises(DataError, match="overlap"):
        _dry(root, _config(root, "o", valid_dates=(20220504, 20220506)), tmp_path)
    with pytest.raises(DataError, match="empty date window"):
        _dry(root, _config(root, "e", test_dates=(20220508, 20220507)), tmp_path)


@pytest.mark.parametrize("log, msg, line, field", [
    ([_LOG[0], ""], "empty record", 3, None),
    ([_LOG[0], "0,1,20220425"], "malformed line", 3, "line"),
    ([_LOG[0].replace(",1800,", ",18x0,")], "malformed value", 2, "hourmin"),
    ([_log_row(tab=15)], "outside the declared range", 2, "tab"),
    ([_log_row(click=2)], "outside the declared range", 2, "is_click"),
    ([_log_row(user=3)], "outside the declared range", 2, "user_id"),
    ([_log_row(date=20220424)], "outside the declared range", 2, "date"),
    ([_log_row(hourmin=1830)], "not on the hour", 2, "hourmin"),
    ([_log_row(play=-5)], "outside the declared range", 2, "play_time_ms"),
])
def test_log_reader_errors(tmp_path, log, msg, line, field):
    root = tmp_path / "raw"
    cfg = dataclasses.replace(_config(None), checksums=_write(root, log=log))
    with pytest.raises(DataError) as e:
        _dry(root, cfg, tmp_path)
    assert msg in str(e.value) and e.value.path.endswith(kp.LOG_FILE)
    assert (e.value.line, e.value.field) == (line, field) and e.value.expected


def test_feature_and_join_errors(tmp_path):
    def run(sub, **files):
        root = tmp_path / sub
        cfg = dataclasses.replace(_config(None), checksums=_write(root, **files))
        with pytest.raises(DataError) as e:
            _dry(root, cfg, tmp_path)
        return e.value

    e = run("a", users=[_user_row(0), _user_row(0)])
    assert "duplicate record" in str(e) and e.line == 3 and e.path.endswith(kp.USER_FILE)
    e = run("b", users=[_user_row(0), _user_row(2)])
    assert "user_id not in" in str(e) and e.path.endswith(kp.LOG_FILE) and e.line == 5 and e.field == "user_id"
    e = run("c", videos=[_video_row(0), _video_row(1).replace("LongImport", ""), _video_row(2)])
    assert "empty value" in str(e) and e.field == "upload_type" and e.line == 3
    e = run("d", videos=[_video_row(0), _video_row(1, "4;5"), _video_row(2)])
    assert "malformed tag list" in str(e) and e.field == "tag"
    root = tmp_path / "e"
    sums = _write(root)
    log = root / kp.LOG_FILE
    log.write_text(log.read_text().replace("is_click,is_like", "is_like,is_click", 1))
    sums[kp.LOG_FILE] = readers.sha256_file(log)
    cfg = dataclasses.replace(_config(None), checksums=sums)
    with pytest.raises(DataError, match="unexpected header") as e:
        _dry(root, cfg, tmp_path)
    assert e.value.line == 1 and e.value.field == "header"
    e = run("f", users=[_user_row(0), _user_row(1).replace(",799,", ",7.5,"), _user_row(2)])
    assert "malformed value" in str(e) and e.field == "register_days" and e.line == 3

    root = tmp_path / "g"
    cfg = _config(root)
    (root / kp.VIDEO_FILE).write_text((root / kp.VIDEO_FILE).read_text().replace("9.0", "8.0", 1))
    with pytest.raises(DataError, match="checksum") as e:
        _dry(root, cfg, tmp_path)
    assert e.value.field == "sha256" and e.value.path.endswith(kp.VIDEO_FILE)
    (root / kp.USER_FILE).unlink()
    with pytest.raises(DataError, match="missing"):
        _dry(root, cfg, tmp_path)


def test_catalog_entry():
    s = catalog.spec("kuairand_pure")
    assert s.kind == "impressions" and "CC BY-SA 4.0" in s.licence and "Gao et al." in s.licence
    assert not s.internal_only and s.stats_fn is kp.dataset_stats


# --------------------------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def real_dry(shared_data, tmp_path_factory):
    root = shared_data
    b = catalog.spec("kuairand_pure").make_builder(str(root), str(tmp_path_factory.mktemp("kr_dry")))
    return b, b._split_generators(None)


def test_real_matches_source_md(real_dry, shared_data):
    b, gens = real_dry
    sums = readers.source_checksums(shared_data / "kuairand_pure" / "SOURCE.md")
    sums = {k.replace(" (ours)", ""): v for k, v in sums.items()}
    assert {k: sums[k] for k in kp._CHECKSUMS} == kp._CHECKSUMS
    st = b.info.metadata["stats"]
    want = catalog.spec("kuairand_pure").source_stats
    fs = st["file_stats"]
    assert (fs["rows"], fs["users"], fs["videos"]) == (want["rows"], want["users"], want["videos"])
    for label, rate in want["positive_rates"].items():
        assert fs["positive_rates"][label] == pytest.approx(rate, abs=6e-6 if rate < 0.1 else 6e-5), label
    assert fs["median_play_time_ms"] == want["median_play_time_ms"]
    assert fs["median_duration_ms"] == want["median_duration_ms"]
    assert {int(k): v for k, v in fs["tab_counts"].items()} == want["tab_counts"]
    by_date = {int(k): v for k, v in fs["rows_by_date"].items()}
    assert sum(v for d, v in by_date.items() if d <= 20220430) == want["val_rows"]  # the project's val period
    assert sum(v for d, v in by_date.items() if d >= 20220501) == want["test_rows"]
    assert st["user_feature_rows"] == want["user_feature_rows"]
    assert st["video_feature_rows"] == want["video_feature_rows"]
    (drop,) = b.info.metadata["drops"][kp.LOG_FILE].values()
    assert drop["count"] == 5460 and st["interactions"] == want["rows"] - 5460
    sizes = {k: v["records"] for k, v in st["splits"].items()}
    assert sizes == {"train": 167281, "valid": 26683, "test": 28905}


def test_real_records_join(real_dry, tmp_path):
    """Records are the CSV rows joined with the feature files (checked against the raw text)."""
    b, gens = real_dry
    folder = b.raw_folder()
    log_lines = (folder / kp.LOG_FILE).read_text().split("\n")
    users = {ln.split(",", 1)[0]: ln for ln in (folder / kp.USER_FILE).read_text().split("\n")[1:] if ln}
    md = b.info.metadata
    n = 0
    for key, rec in gens["valid"]:
        raw = dict(zip(kp.LOG_COLUMNS, map(int, log_lines[key - 1].split(","))))
        assert (rec["user_id"], rec["video_id"], rec["time_ms"]) == (raw["user_id"], raw["video_id"], raw["time_ms"])
        assert rec["labels"].tolist() == [raw[c] for c in kp.LABEL_NAMES]
        assert rec["hour"] == raw["hourmin"] // 100 and rec["tab"] == raw["tab"]
        deg = md["vocabularies"]["user_active_degree"][rec["user_features"][0]]
        assert users[str(raw["user_id"])].split(",")[1] == deg
        b.info.features.encode_example(rec)
        n += 1
        if n == 300:
            break


def test_real_build_one_day(shared_data, tmp_path):
    """ArrayRecord end to end on a one-day window of the real log (the full build takes ~1-2 min)."""
    cfg = kp.make_config("one_day", train_dates=None, valid_dates=None, test_dates=(20220508, 20220508))
    b = kp.JaxrecKuaiRandPure(config=cfg, raw_root=str(shared_data), data_dir=str(tmp_path))
    b.download_and_prepare()
    st = kp.dataset_stats(tfds.builder_from_directory(b.data_dir))
    outside = st["drops"][kp.LOG_FILE]["date outside every split window"]["count"]
    assert st["splits"]["test"]["records"] + outside + 5460 == 228329
    src = b.as_data_source("test")
    assert {int(src[i]["date"]) for i in range(0, len(src), 101)} == {20220508}
