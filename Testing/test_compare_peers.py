"""benchmarks/compare_peers.py without nnU-Net: its copy of nnU-Net's tile grid, the extrapolation arithmetic,
the ratios and the Markdown generated from a peers.json-like record (the script needs nnunetv2 only to run the
peers; these parts must work, and are tested, without it)."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cp():
    path = REPO / "benchmarks" / "compare_peers.py"
    spec = importlib.util.spec_from_file_location("compare_peers_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_steps_match_nnunet(cp):
    # nnU-Net's own example (compute_steps_for_sliding_window's comment): image 110, patch 64, step 0.5
    assert cp.compute_steps([110], [64], 0.5) == [[0, 23, 46]]
    assert cp.compute_steps([128, 128, 128], [128, 128, 128], 0.5) == [[0], [0], [0]]


def test_tile_count_of_the_benchmark_ct(cp):
    # 300 x 512 x 512 at 1 x 0.78 x 0.78 mm resampled to 0.78125 mm: 384 x 511 x 511, 128^3 tiles, step 0.5
    shape = cp.resampled_shape([300, 512, 512], [1.0, 0.78, 0.78], [0.78125] * 3)
    assert shape == [384, 511, 511]
    assert cp.tile_count(shape, [128, 128, 128]) == 5 * 7 * 7
    # smaller than the patch: padded to it, one tile
    assert cp.tile_count([100, 133, 133], [128, 128, 128]) == 1 * 2 * 2


def test_extrapolation(cp):
    ex = cp.extrapolate(30.0, [10.0, 12.0, 11.0], 245)
    assert ex["tile_s"] == 11.0  # median
    assert ex["tiles_extrapolated"] == 242
    assert ex["seconds"] == pytest.approx(30.0 + 242 * 11.0)
    assert ex["network_s"] == pytest.approx(33.0 + 242 * 11.0)
    assert cp.extrapolate(5.0, [2.0, 4.0], 2)["seconds"] == 5.0  # nothing left: the measurement itself
    with pytest.raises(ValueError):
        cp.extrapolate(1.0, [], 3)


def _record(cp):
    methods = {
        "cascade_warm": {"seconds": 10.0, "peak_rss_mib": 1000.0, "gflop": 200.0, "gflops": 40.0, "network_s": 5.0,
                         "glue_s": 5.0, "glue_share": 0.5, "glue_share_predict_only": 0.4, "read_s": 1.0,
                         "write_s": 0.5, "backend": "OpenVINO, float32", "extrapolated": False},
        "cascade_cold": {"seconds": 20.0, "peak_rss_mib": 900.0, "timings": {"read input": 1.0, "load models": 2.0},
                         "startup_s": 1.0, "cold_start_s": 3.0, "time_to_first_voxel_s": 4.0,
                         "cold_start_share": 0.15, "time_to_first_voxel_share": 0.2, "extrapolated": False},
        "nnunet_fullres": {"seconds": 1000.0, "peak_rss_mib": 3000.0, "gflop": 9000.0, "gflops": 50.0,
                           "extrapolated": True, "how": "measured 100 s + 10 x 90 s", "tiles": 245,
                           "patch": [128, 128, 128], "spacing": [0.78125] * 3, "resampled_shape": [384, 511, 511],
                           "gflop_per_call": 955.0, "mirror": False},
        "nnunet_3mm": {"seconds": 25.0, "peak_rss_mib": 2000.0, "gflop": 955.0, "gflops": 45.0,
                       "extrapolated": False, "tiles": 4, "patch": [128, 128, 128], "spacing": [3.0] * 3,
                       "resampled_shape": [100, 133, 133], "gflop_per_call": 955.0, "mirror": False},
    }
    case = {"name": "phantom", "shape": [300, 512, 512], "spacing": [0.78, 0.78, 1.0], "methods": methods}
    case.update(cp.summarize(case))
    res = {"date": "today", "threads": 2, "loadavg_before": [0.5], "loadavg_after": [1.0],
           "versions": {"torch": "2.13.0", "nnunetv2": "2.8.1", "python": "3.11"},
           "machine": {"cpu": "test CPU", "logical_cpus": 2, "isa": "avx2", "peak": {"f32": 50.0}},
           "cases": [case], "plan_sources": {"fullres": "the paper"}, "plans": {}}
    return res


def test_ratios_and_targets(cp):
    res = _record(cp)
    case = res["cases"][0]
    assert case["ratios"]["nnunet_fullres"] == pytest.approx(100.0)
    assert case["ratios"]["nnunet_3mm"] == pytest.approx(2.5)
    assert case["ratios"]["nnunet_fullres_mirror"] is None  # not run
    assert case["ratios_cold"]["nnunet_fullres"] == pytest.approx(50.0)
    full = [r for r in cp.targets(res) if "3d_fullres" in r["target"]]
    assert all(r["met"] and r["extrapolated"] for r in full)
    three = [r for r in cp.targets(res) if "3 mm" in r["target"]]
    assert [r["met"] for r in three] == [False, False]  # 2.5x warm, 1.25x cold: under 3x
    assert any("80%" in r["target"] and r["met"] for r in cp.targets(res))  # 40 of 50 GFLOP/s


def test_markdown_marks_extrapolated_figures(cp, tmp_path):
    res = _record(cp)
    md = cp.markdown(res)
    line = next(l for l in md.splitlines() if l.startswith("| nnU-Net v2, KiTS19 3d_fullres, no mirroring"))
    assert "extrapolated" in line and "measured 100 s + 10 x 90 s" in line and "100.0" in line
    line3 = next(l for l in md.splitlines() if l.startswith("| nnU-Net v2, 3 mm"))
    assert "extrapolated" not in line3 and "| 2.5 |" in line3
    doc = tmp_path / "performance.md"
    doc.write_text(f"# P\n\ntext\n\n{cp.DOCS_BEGIN}\nstale table\n{cp.DOCS_END}\n\nafter\n")
    assert cp.update_docs(res, doc)
    text = doc.read_text()
    assert "stale table" not in text and "~1000 (extrapolated)" in text and text.endswith("after\n")
    cp.write_reports(res, tmp_path, None)
    assert (tmp_path / "peers.md").read_text() == md
