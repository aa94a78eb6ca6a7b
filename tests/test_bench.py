"""The benchmark suite runs end to end and writes the figures it promises (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CONVERT_VENV, REPO, venv_python

# bench/ is a tool of the checkout, not part of the installed package.
sys.path.insert(0, str(REPO))
from bench import report  # noqa: E402
from bench.daemon_cost import _frames_processed, read_proc  # noqa: E402
from bench.venvs import TF_PYTHON, run_json  # noqa: E402

PER_FACE_KEYS = ["int8_litert_1", "int8_litert_2", "int8_tflite_runtime_1", "float_litert_1", "keras_predict",
                 "keras_call"]


def test_smoke_run_writes_every_section(tiny_dir, tmp_path):
    """A tiny run of `python -m bench` with no TensorFlow: every section is there, the seed side says why not."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--model", str(tiny_dir / "tiny_int8.tflite"),
         "--float-model", str(tiny_dir / "tiny_float.tflite"), "--tf-python", str(tmp_path / "no-tf" / "python"),
         "--runs", "5", "--warmup-runs", "1", "--frames", "6", "--warmup-frames", "1", "--replay-frames", "4",
         "--seconds", "2", "--warmup", "0.5", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["schema"] == "moodbox-bench/1"
    assert data["command"].startswith("python -m bench --model")
    assert {"cpu", "cores", "python", "packages"} <= set(data["machine"])
    assert data["model"]["size_bytes"] == (tiny_dir / "tiny_int8.tflite").stat().st_size

    rows = {row["key"]: row for row in data["per_face"]}
    assert list(rows) == PER_FACE_KEYS
    for key in ("int8_litert_1", "int8_litert_2", "float_litert_1"):
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["runs"] == 5 and 0 < rows[key]["median_ms"] <= rows[key]["p90_ms"]
        assert rows[key]["runtime"].startswith("ai_edge_litert")
    assert rows["int8_litert_2"]["threads"] == 2 and rows["float_litert_1"]["dtype"] == "float32"
    # Bookworm's stack is measured where ./install.sh --dev made it, and said to be missing elsewhere.
    tflite = rows["int8_tflite_runtime_1"]
    if (REPO / ".venv-tflite").exists():
        assert tflite["status"] == "ok" and tflite["runtime"].startswith("tflite_runtime"), tflite
    else:
        assert tflite["status"] == "not installed"
    for key in ("keras_predict", "keras_call"):
        assert rows[key]["status"] == "not installed" and "no-tf" in rows[key]["reason"]

    moodbox = data["pipeline"]["moodbox"]
    assert moodbox["status"] == "ok" and moodbox["frames"] == 6 and moodbox["fps"] > 0
    assert moodbox["faces_per_frame"] == 1.0  # the replay is the one-face photo
    assert sum(moodbox["passes"].values()) == 6
    assert data["pipeline"]["seed"]["status"] == "not installed" and data["pipeline"]["ratio"] is None

    daemon = data["daemon"]
    assert daemon["status"] == "ok", daemon.get("reason", "") + "\n" + "\n".join(daemon.get("log_tail", []))
    assert daemon["exit_code"] == 0
    assert daemon["cpu_s"] >= 0 and daemon["rss_mb_steady"] > 10 and daemon["rss_mb_peak"] >= daemon["rss_mb_steady"]
    assert daemon["frames"] > 0 and daemon["frames_method"]
    cold = daemon["cold_start"]
    assert cold["ready_s"] > 0
    assert (cold["first_mood"] is None) == (cold["first_mood_s"] is None)

    assert [g["met"] for g in data["goals"]][1] is None  # no seed side, no ratio to judge
    assert data["estimates"]["label"] == "ESTIMATE" and set(data["estimates"]["boards"]) == {"pi4", "pi5"}
    for heading in ("1. Per-face", "2. Per-frame", "3. Daemon", "4. Cold start", "Goals", "ESTIMATES"):
        assert heading in result.stdout


def test_seed_baseline_in_the_tensorflow_venv(tmp_path):
    """The seed-style side: Keras predict per face and the Haar 1.3 / 600x500 loop, in .venv-convert."""
    venv_python(CONVERT_VENV)
    from bench.replay import write_replay

    frames = write_replay(tmp_path / "frames", 3)
    seed = run_json(TF_PYTHON, "bench.seed_baseline",
                    ["--frames", str(frames), "--predict-runs", "2", "--loop-frames", "3", "--warmup", "1"], 300)
    assert seed["status"] == "ok", seed
    assert seed["params"] == 2_345_607  # the paper's CNN
    assert seed["predict"]["runs"] == 2 and seed["predict"]["median_ms"] > 0 and seed["call"]["median_ms"] > 0
    loop = seed["loop"]
    assert loop["frame_size"] == [600, 500] and loop["scale_factor"] == 1.3
    assert loop["frames"] == 3 and loop["fps"] > 0 and loop["faces_per_frame"] >= 1


def test_missing_venv_is_reported_not_raised(tmp_path):
    row = run_json(tmp_path / "nowhere" / "python", "bench.per_face", [], 10)
    assert row["status"] == "not installed" and "nowhere" in row["reason"]


def test_frame_counter_uses_only_fresh_values_inside_the_window():
    # Stats every second; the counter moves every 5 s (PipelineStats), 5 frames/s.
    points = [(float(t), 25 * (t // 5)) for t in range(0, 31)]
    fps, how = _frames_processed(points, 4.5, 30.5)
    assert fps == pytest.approx(5.0) and "125 frames over 25.0 s" in how
    assert _frames_processed(points, 6.0, 9.0) is None  # no update inside: the caller falls back


def test_read_proc_on_this_process():
    sample = read_proc(os.getpid())
    assert sample.cpu_s > 0 and sample.rss_kb > 0 and sample.peak_rss_kb >= sample.rss_kb and sample.threads >= 1


def test_estimates_scale_times_and_keep_ratios():
    result = {"per_face": [{"key": "int8_litert_1", "status": "ok", "median_ms": 0.5}],
              "pipeline": {"moodbox": {"fps": 100.0}, "seed": {"fps": 4.0}, "ratio": 25.0},
              "daemon": {"cpu_pct_one_core": 2.0, "cold_start": {"ready_s": 1.0}}}
    est = report.estimates(result, pi4_slowdown=8.0, pi5_over_pi4=2.0)
    assert est["boards"]["pi4"] == {"slowdown": 8.0, "int8_ms_per_face": 4.0, "moodbox_fps": 12.5, "seed_fps": 0.5,
                                    "daemon_cpu_pct_one_core": 16.0, "ready_s": 8.0}
    assert est["boards"]["pi5"]["slowdown"] == 4.0
    assert "ESTIMATES" in est["method"] and "8x" in est["method"]
    assert report.headline(result)["pipeline_fps_moodbox_vs_seed"] == 25.0
