"""Headline ratios, goals, Raspberry Pi estimates and the printed table, from the measured figures."""

from __future__ import annotations

from typing import Any

__all__ = ["PI4_SLOWDOWN", "PI5_OVER_PI4", "estimates", "goals", "headline", "table"]

#: Assumed time multiplier of one Raspberry Pi 4 core (Cortex-A72, 1.8 GHz) against one core of the
#: measuring machine. An assumption, not a measurement: see ESTIMATE_METHOD.
PI4_SLOWDOWN = 8.0
#: Pi 5 core (Cortex-A76, 2.4 GHz) speed over a Pi 4 core.
PI5_OVER_PI4 = 2.0

ESTIMATE_METHOD = (
    "ESTIMATES, not measurements: every time measured here is multiplied by an assumed per-core slowdown of the "
    "Pi against this machine; ratios are taken as machine-independent and not scaled. "
    "Pi 5 vs Pi 4 per core: {pi5:g}x, from sysbench 1.0.20 single-thread (2,737 vs 1,478 events/s, "
    "leoncode.co.uk 'Raspberry Pi CPU Benchmarks') and Raspberry Pi Ltd's '2-3x' for the Pi 5. "
    "This machine vs a Pi 4 core: {pi4:g}x, an assumption of the order of single-core scores of current x86 "
    "server cores vs a Cortex-A72 in cross-platform suites; it cannot be measured here, and sysbench cannot "
    "stand in (its prime loop scores this kind of machine about level with a Pi 4, because integer division "
    "says nothing about SIMD image or int8 work). Int8 convolutions gain most from this machine's vector "
    "instructions (AVX-512 VNNI where present) and the Pi 4 has no dot-product instructions at all, so the "
    "int8 model may be slower on a Pi 4 than estimated. The daemon's CPU here includes the replay camera's "
    "JPEG decoding, which a Pi camera does not need. Treat them as +-50 %, and replace them with figures "
    "from `python -m bench` run on the Pi itself."
)


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _row(result: dict[str, Any], key: str) -> dict[str, Any] | None:
    for row in result.get("per_face", []):
        if row["key"] == key and row.get("status") == "ok":
            return row
    return None


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The ratios the README leads with (None where a side was not measured)."""
    litert = _row(result, "int8_litert_1")
    predict = _row(result, "keras_predict")
    pipeline = result.get("pipeline", {})
    return {
        "per_face_int8_vs_keras_predict": (round(predict["median_ms"] / litert["median_ms"], 1)
                                           if litert and predict else None),
        "pipeline_fps_moodbox_vs_seed": pipeline.get("ratio"),
        "daemon_cpu_pct_one_core": _get(result, "daemon", "cpu_pct_one_core"),
        "daemon_rss_mb_peak": _get(result, "daemon", "rss_mb_peak"),
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issues with the measured value and whether it is met (None: not measured)."""
    litert = _row(result, "int8_litert_1")
    checks = [
        ("int8 ms per face, ai-edge-litert, 1 thread", litert["median_ms"] if litert else None, "<=", 1.0),
        ("pipeline frames/s, Moodbox over seed loop", _get(result, "pipeline", "ratio"), ">=", 20.0),
        ("daemon CPU, % of one core", _get(result, "daemon", "cpu_pct_one_core"), "<=", 10.0),
        ("daemon RSS peak, MB", _get(result, "daemon", "rss_mb_peak"), "<=", 120.0),
    ]
    out = []
    for name, value, op, goal in checks:
        met = None if value is None else (value <= goal if op == "<=" else value >= goal)
        out.append({"goal": name, "value": value, "target": f"{op} {goal:g}", "met": met})
    return out


def estimates(result: dict[str, Any], pi4_slowdown: float = PI4_SLOWDOWN,
              pi5_over_pi4: float = PI5_OVER_PI4) -> dict[str, Any]:
    """Pi 4 / Pi 5 figures scaled from this machine's, labelled as estimates with their method."""
    litert = _row(result, "int8_litert_1")
    moodbox_fps = _get(result, "pipeline", "moodbox", "fps")
    seed_fps = _get(result, "pipeline", "seed", "fps")
    cpu_pct = _get(result, "daemon", "cpu_pct_one_core")
    ready_s = _get(result, "daemon", "cold_start", "ready_s")
    boards = {}
    for board, slowdown in (("pi4", pi4_slowdown), ("pi5", pi4_slowdown / pi5_over_pi4)):
        boards[board] = {
            "slowdown": round(slowdown, 2),
            "int8_ms_per_face": round(litert["median_ms"] * slowdown, 2) if litert else None,
            "moodbox_fps": round(moodbox_fps / slowdown, 1) if moodbox_fps else None,
            "seed_fps": round(seed_fps / slowdown, 2) if seed_fps else None,
            "daemon_cpu_pct_one_core": round(cpu_pct * slowdown, 1) if cpu_pct is not None else None,
            "ready_s": round(ready_s * slowdown, 1) if ready_s is not None else None,
        }
    return {"label": "ESTIMATE", "method": ESTIMATE_METHOD.format(pi4=pi4_slowdown, pi5=pi5_over_pi4),
            "boards": boards}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _num(value: float | None, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def table(result: dict[str, Any]) -> str:
    """The report as text, for a terminal and for the README."""
    m = result["machine"]
    pkgs = m["packages"]
    lines = [
        f"Moodbox benchmark, {result['created']}",
        f"machine: {m['cpu']} ({m['cpu_detail']}), {m['cores']} cores, {m['memory_mb']:.0f} MB, {m['os']}",
        f"software: Python {m['python']}, numpy {pkgs['numpy']}, OpenCV {pkgs['opencv-python-headless']}, "
        f"ai-edge-litert {pkgs['ai-edge-litert']}",
        f"load average before / after: {result['load_before']} / {result['load_after']}"
        + ("  (machine busy: figures are pessimistic)" if result["load_before"][:1] and
           result["load_before"][0] > 0.5 * m["cores"] else ""),
        f"model: {result['model'].get('path')} ({result['model'].get('size_bytes', 0):,} bytes, "
        f"version {result['model'].get('version', '?')})",
        "",
        "1. Per-face classification, one 48x48 face          median ms    p90 ms   vs Keras predict",
    ]
    predict = _row(result, "keras_predict")
    for row in result["per_face"]:
        label = f"   {row['label']:<50}"
        if row.get("status") != "ok":
            lines.append(f"{label}{row.get('status')}: {row.get('reason', '')}")
            continue
        ratio = f"{predict['median_ms'] / row['median_ms']:.1f}x" if predict else "-"
        lines.append(f"{label}{_ms(row['median_ms']):>8} {_ms(row['p90_ms']):>9}   {ratio:>10}")
    pipe = result.get("pipeline", {})
    lines += ["", "2. Per-frame pipeline, 640x480 replay, one face       frames/s  ms/frame (median)  faces/frame"]
    for key, label in (("moodbox", "Moodbox: 320 px detect + region search + int8"),
                       ("seed", "seed loop: Haar 1.3 on 600x500 + Keras predict")):
        side = pipe.get(key) or {}
        if side.get("status", "ok") != "ok" or "fps" not in side:
            lines.append(f"   {label:<50}{side.get('status', 'not run')}: {side.get('reason', '')}")
            continue
        lines.append(f"   {label:<50}{side['fps']:>8.2f}  {_ms(side['ms_per_frame']['median_ms']):>17}"
                     f"  {side['faces_per_frame']:>11.2f}")
    by_pass = _get(pipe, "moodbox", "mean_ms_by_pass") or {}
    if by_pass:
        counts = pipe["moodbox"]["passes"]
        lines.append("   Moodbox mean ms by search: " + ", ".join(
            f"{kind} {ms:.1f} ms ({counts[kind]} frames)" for kind, ms in sorted(by_pass.items())))
    lines.append(f"   ratio: {_num(pipe.get('ratio'), '{:.1f}x')} (goal >= 20x)")
    d = result.get("daemon") or {}
    lines += ["", f"3. Daemon at the default {_num(d.get('pipeline_fps'), '{:g}')} fps "
                  f"over {_num(d.get('window_s'), '{:.0f}')} s (after {_num(d.get('warmup_s'), '{:g}')} s warm-up)"]
    if d.get("status") == "ok":
        lines += [
            f"   CPU {d['cpu_pct_one_core']:.1f} % of one core (goal <= 10 %), "
            f"{_num(d['cpu_ms_per_frame'], '{:.2f}')} ms CPU per processed frame",
            f"   frames: {d['frames']:.0f} ({d['frames_per_s']:.2f}/s), {d['frames_method']}",
            f"   of which the replay camera's JPEG decoding (none on a Pi camera): about "
            f"{d['replay_decode_pct_one_core']:.1f} % of one core ({d['replay_decode_ms']:.1f} ms per captured frame)",
            f"   RSS steady {d['rss_mb_steady']:.1f} MB, peak {d['rss_mb_peak']:.1f} MB (goal <= 120 MB); "
            f"{d['threads']} threads; SIGTERM -> exit {d['exit_code']} in {_num(d['stop_s'], '{:.2f}')} s",
        ]
        c = d["cold_start"]
        mood = (f"first mood '{c['first_mood']}' after {c['first_mood_s']:.1f} s" if c["first_mood"]
                else c["first_mood_note"])
        lines += ["", "4. Cold start",
                  f"   READY=1 after {c['ready_s']:.2f} s ({c['cpu_s_to_ready']:.2f} s CPU, "
                  f"{c['rss_mb_at_ready']:.0f} MB); {mood}"]
    else:
        lines.append(f"   {d.get('status', 'not run')}: {d.get('reason', '')}")
        lines += ["", "4. Cold start", "   not measured (the daemon run above did not complete)"]
    lines += ["", "Goals"]
    for goal in result["goals"]:
        state = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        lines.append(f"   {goal['goal']:<48}{_num(goal['value'], '{:g}'):>10}  {goal['target']:<8} {state}")
    est = result.get("estimates")
    if est:
        lines += ["", "Raspberry Pi ESTIMATES (scaled, not measured; method in the JSON 'estimates.method')",
                  "   board  slowdown  int8 ms/face  Moodbox fps  seed fps  daemon CPU % of a core  READY s"]
        for board, e in est["boards"].items():
            lines.append(f"   {board:<6} {e['slowdown']:>7.2f}x  {_num(e['int8_ms_per_face'], '{:.2f}'):>12}  "
                         f"{_num(e['moodbox_fps']):>11}  {_num(e['seed_fps'], '{:.2f}'):>8}  "
                         f"{_num(e['daemon_cpu_pct_one_core']):>22}  {_num(e['ready_s']):>7}")
    return "\n".join(lines)
