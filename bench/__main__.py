"""``python -m bench``: Moodbox against the seed's approach, side by side, in one run on this machine.

1. per face: the int8 model under ai-edge-litert (1 and 2 threads) and
   tflite-runtime 2.14 (``.venv-tflite``), its float TFLite twin, and the
   seed-style Keras float CNN with ``model.predict`` (``.venv-convert``);
2. per frame on a 640x480 one-face replay: Moodbox's detector + classifier
   against the seed's loop (Haar 1.3 on 600x500 + Keras predict), and the ratio;
3. the real daemon at the default 5 fps: CPU per frame, % of one core, RSS;
4. its cold start: time to READY=1 and to the first mood.

Prints a table and, with ``--out``, writes every figure as JSON. Pi 4 / Pi 5
figures are estimates, scaled by stated assumptions. Measure on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import daemon_cost, pipeline, report
from bench.machine import describe, load_average
from bench.per_face import measure as per_face
from bench.replay import write_replay
from bench.venvs import REPO, TF_PYTHON, TFLITE_PYTHON, run_json
from device.config import Config
from device.emotion import metadata_path

__all__ = ["SCHEMA", "main", "run"]

SCHEMA = "moodbox-bench/1"
DEFAULT_MODEL = REPO / Config().model.path


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def float_twin(model: Path) -> Path | None:
    """The float TFLite model ``convert quantize`` writes beside the int8 one (``<stem>_float.tflite``)."""
    name = f"{model.stem}_float.tflite"
    for candidate in (model.with_name(name), REPO / "build" / model.stem / name):
        if candidate.exists():
            return candidate
    return None


def _model_info(model: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(model), "size_bytes": model.stat().st_size}
    try:
        meta = json.loads(metadata_path(model).read_text())
    except (OSError, ValueError):
        return info
    for key in ("name", "version", "sha256", "params", "macs"):
        if key in meta:
            info[key] = meta[key]
    return info


def _in_process(key: str, label: str, fn, **extra: Any) -> dict[str, Any]:
    try:
        return {"key": key, "label": label, "status": "ok", **extra, **fn()}
    except Exception as exc:  # one failed measurement must not lose the others
        return {"key": key, "label": label, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def _per_face(args: argparse.Namespace, seed: dict[str, Any]) -> list[dict[str, Any]]:
    model, runs, warmup = args.model, args.runs, args.warmup_runs
    rows = [
        _in_process("int8_litert_1", "int8, ai-edge-litert, 1 thread", lambda: per_face(model, 1, runs, warmup)),
        _in_process("int8_litert_2", "int8, ai-edge-litert, 2 threads", lambda: per_face(model, 2, runs, warmup)),
    ]
    tflite = run_json(args.tflite_python, "bench.per_face",
                      ["--model", str(model), "--threads", "1", "--runs", str(runs), "--warmup", str(warmup)], 600)
    rows.append({"key": "int8_tflite_runtime_1", "label": "int8, tflite-runtime (.venv-tflite), 1 thread", **tflite})
    twin = args.float_model or float_twin(model)
    if twin is None:
        rows.append({"key": "float_litert_1", "label": "float32 TFLite, ai-edge-litert, 1 thread",
                     "status": "not present", "reason": f"no {model.stem}_float.tflite beside the model"})
    else:
        rows.append(_in_process("float_litert_1", "float32 TFLite, ai-edge-litert, 1 thread",
                                lambda: per_face(twin, 1, runs, warmup), model=str(twin)))
    keras_status = {"status": seed["status"], "reason": seed.get("reason", "")}
    for key, label, part in (("keras_predict", "Keras float (paper CNN), model.predict", "predict"),
                             ("keras_call", "Keras float (paper CNN), direct model(x) call", "call")):
        if seed["status"] == "ok":
            rows.append({"key": key, "label": label, "status": "ok", "runtime": f"tensorflow {seed['tensorflow']}",
                         "params": seed["params"], **seed[part]})
        else:
            rows.append({"key": key, "label": label, **keras_status})
    return rows


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every measurement, in order, into one JSON-able dict."""
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "load_before": load_average(),
        "model": _model_info(args.model),
    }
    frames = write_replay(workdir / "frames", args.replay_frames)
    _say(f"bench: seed-style baseline in {args.tf_python} (TensorFlow import takes a while) ...")
    seed = run_json(args.tf_python, "bench.seed_baseline",
                    ["--frames", str(frames), "--predict-runs", str(args.keras_runs),
                     "--loop-frames", str(args.seed_frames)], 900)
    _say("bench: per-face classification ...")
    result["per_face"] = _per_face(args, seed)
    _say("bench: Moodbox per-frame pipeline ...")
    moodbox = _in_process("moodbox", "Moodbox pipeline",
                          lambda: pipeline.measure(frames, args.model, args.frames, args.warmup_frames))
    seed_loop = {"status": "ok", **seed["loop"]} if seed["status"] == "ok" else {
        "status": seed["status"], "reason": seed.get("reason", "")}
    ratio = (round(moodbox["fps"] / seed_loop["fps"], 1)
             if moodbox["status"] == "ok" and seed_loop["status"] == "ok" else None)
    result["pipeline"] = {"moodbox": moodbox, "seed": seed_loop, "ratio": ratio, "replay_frames": args.replay_frames,
                          "note": "frames decoded before timing on both sides; cv2 at its default thread count"}
    _say(f"bench: the daemon for {args.warmup:g} + {args.seconds:g} s ...")
    try:
        result["daemon"] = daemon_cost.measure(args.model, frames, workdir / "daemon", seconds=args.seconds,
                                               warmup_s=args.warmup, use_broker=not args.no_broker)
    except Exception as exc:  # e.g. mosquitto refusing to start: report it, keep the rest
        result["daemon"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result["load_after"] = load_average()
    result["headline"] = report.headline(result)
    result["goals"] = report.goals(result)
    result["estimates"] = report.estimates(result, args.pi4_slowdown, args.pi5_over_pi4)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="int8 model (default: %(default)s)")
    parser.add_argument("--float-model", type=Path,
                        help="its float TFLite twin (default: <stem>_float.tflite beside it or in build/<stem>/)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--seconds", type=float, default=60.0, help="daemon measurement window, s (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="daemon time after READY before measuring, s")
    parser.add_argument("--runs", type=int, default=1000, help="timed TFLite calls per face row (default 1000)")
    parser.add_argument("--warmup-runs", type=int, default=50, help="untimed calls first (default 50)")
    parser.add_argument("--keras-runs", type=int, default=50, help="timed Keras calls (default 50)")
    parser.add_argument("--frames", type=int, default=500, help="frames through the Moodbox pipeline (default 500)")
    parser.add_argument("--seed-frames", type=int, default=50, help="frames through the seed loop (default 50)")
    parser.add_argument("--warmup-frames", type=int, default=5, help="untimed frames first (default 5)")
    parser.add_argument("--replay-frames", type=int, default=30, help="distinct frames in the replay (default 30)")
    parser.add_argument("--tflite-python", type=Path, default=TFLITE_PYTHON,
                        help="Python with tflite-runtime 2.14 (default: %(default)s)")
    parser.add_argument("--tf-python", type=Path, default=TF_PYTHON,
                        help="Python with TensorFlow, for the seed-style baseline (default: %(default)s)")
    parser.add_argument("--no-broker", action="store_true",
                        help="run the daemon without MQTT (frames are then counted as fps x seconds)")
    parser.add_argument("--pi4-slowdown", type=float, default=report.PI4_SLOWDOWN,
                        help="assumed Pi 4 core time / this machine's, for the estimates (default %(default)g)")
    parser.add_argument("--pi5-over-pi4", type=float, default=report.PI5_OVER_PI4,
                        help="assumed Pi 5 core speed over a Pi 4's (default %(default)g)")
    parser.add_argument("--keep", type=Path, help="keep the replay, daemon config and state in this folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.model = args.model.resolve()
    if not args.model.exists():
        print(f"{args.model} not found: ship a model (python -m convert ship) or pass --model", file=sys.stderr)
        return 2
    if args.keep:
        workdir = args.keep.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="moodbox-bench-"))
    started = time.monotonic()
    try:
        result = run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["command"] = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    print(report.table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nfigures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
