"""The soak: the real daemon for a long while, its resources sampled every second.

``python -m bench.soak --minutes 30`` starts ``python -m device run`` on the
same real stand-ins as the fault suite (``tests/daemon_harness.py``): a
replay camera cycling through a face and an empty room (so the mood, the
music and the history keep changing), the fake Spotify Web API that the real
spotipy talks to (tracks of ``--track-s`` seconds, so tracks keep ending), a
private mosquitto with an observer, and a command over MQTT every few seconds.
Every ``--interval`` it reads the daemon's RSS, CPU time, thread count
(``/proc/<pid>/status``) and open files (``/proc/<pid>/fd``), and the
daemon's own frame counter from MQTT ``stats``. After a warm-up, the
verdict compares the first and last third of the run: RSS growth, CPU,
thread and file-descriptor spread, all within :class:`Bounds`. CI runs the
same for 60 s (``tests/test_soak.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The soak runs the fault suite's stand-ins (fake Spotify, mosquitto fixture), which live with the tests.
sys.path.insert(0, str(REPO / "tests"))
from daemon_harness import Run, Stack, history_rows

__all__ = ["Bounds", "Point", "SoakResult", "main", "run_soak", "verdict"]

#: Frames of the replay: 10 s of a face, then 6 s of an empty room, at the camera's 10 fps.
FACE_FRAMES, EMPTY_FRAMES = 100, 60
#: Production rates (the config defaults), quick mood and music reactions so the cycle exercises them.
OVERRIDES: dict[str, dict[str, Any]] = {
    "camera": {"fps": 10.0},
    "pipeline": {"fps": 5.0},
    "display": {"night_start": "00:00", "night_end": "00:00"},  # never dark: the display draws all along
    "music": {"no_face_pause_s": 2.0, "poll_s": 2.0},
}
#: A command every this many seconds, round-robin.
COMMAND_EVERY_S = 5.0
COMMANDS = (("volume", 40), ("mood", "sad 1"), ("feedback", "like"), ("mood", "clear"), ("next", None))


@dataclass(frozen=True)
class Bounds:
    """How flat is flat, after the warm-up, between the first and last third of the samples."""

    rss_growth_mb: float = 4.0  # median RSS, last third minus first third
    cpu_growth: float = 1.5  # CPU share of the last third at most this times the first's ...
    cpu_slack_pct: float = 2.0  # ... plus this many percentage points of one core (scheduling noise)
    thread_spread: int = 2  # max - min threads
    fd_spread: int = 4  # max - min open files (HTTP keep-alive connections come and go)
    min_fps_share: float = 0.5  # processed frames per second at least this share of [pipeline] fps


@dataclass(frozen=True)
class Point:
    at: float  # seconds since READY
    cpu_s: float
    rss_mb: float
    threads: int
    fds: int
    frames: int | None  # the daemon's own counter (MQTT stats); None before the first stats message


@dataclass
class SoakResult:
    seconds: float
    pipeline_fps: float
    points: list[Point] = field(default_factory=list)
    exit_code: int | None = None
    stop_s: float | None = None
    alive_to_the_end: bool = False
    moods: int = 0  # rows in the history's moods table
    tracks: int = 0  # rows in its tracks table
    commands: dict[str, int] = field(default_factory=dict)  # "ok" / "error" / "unanswered"
    problems_in_log: list[str] = field(default_factory=list)  # ERROR lines and tracebacks


def run_soak(workdir: Path, seconds: float, *, interval_s: float = 1.0, track_s: float = 20.0,
             on_point: Callable[[Point], None] | None = None) -> SoakResult:
    """Run the daemon for ``seconds`` after READY, sampling every ``interval_s``; then SIGTERM it."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir / "stack", track_s=track_s)
    run = Run(stack, workdir / "run", face_frames=FACE_FRAMES, empty_frames=EMPTY_FRAMES, overrides=OVERRIDES)
    result = SoakResult(seconds, OVERRIDES["pipeline"]["fps"], commands={"ok": 0, "error": 0, "unanswered": 0})
    try:
        daemon = run.start()
        ready = time.monotonic()
        next_command, turn = ready + COMMAND_EVERY_S, 0
        tick = ready
        while tick - ready < seconds and daemon.alive:
            tick += interval_s
            time.sleep(max(0.0, tick - time.monotonic()))  # the sampling period itself
            try:
                sample = daemon.sample()
            except (OSError, ValueError):
                break
            point = Point(round(sample.at - ready, 2), sample.cpu_s, round(sample.rss_kb / 1024, 2), sample.threads,
                          sample.fds, run.box.stat())
            result.points.append(point)
            if on_point is not None:
                on_point(point)
            if time.monotonic() >= next_command:
                _command(run, COMMANDS[turn % len(COMMANDS)], result.commands)
                next_command, turn = next_command + COMMAND_EVERY_S, turn + 1
        result.alive_to_the_end = daemon.alive
        result.exit_code, result.stop_s = daemon.terminate()
        daemon.close()  # and read its log to the end
        result.moods = len(history_rows(run.state, "moods"))
        result.tracks = len(history_rows(run.state, "tracks"))
        result.problems_in_log = [line for line in daemon.log if " ERROR " in line or "Traceback" in line]
    finally:
        run.close()
        stack.close()
    return result


def _command(run: Run, command: tuple[str, Any], counts: dict[str, int]) -> None:
    name, value = command
    try:
        answer = run.box.command(name, value, timeout=15.0)
    except AssertionError:
        counts["unanswered"] += 1
        return
    # A command may fairly fail (nothing playing to rate or skip while the room is empty); it must be answered.
    counts["ok" if answer["status"] == "ok" else "error"] += 1


def _thirds(points: list[Point]) -> tuple[list[Point], list[Point]]:
    third = max(1, len(points) // 3)
    return points[:third], points[-third:]


def _cpu_pct(points: list[Point]) -> float:
    span = points[-1].at - points[0].at
    return 100.0 * (points[-1].cpu_s - points[0].cpu_s) / span if span > 0 else 0.0


def verdict(result: SoakResult, warmup_s: float, bounds: Bounds = Bounds()) -> tuple[dict[str, Any], list[str]]:
    """The figures and every bound that was broken (an empty list: the soak passed)."""
    problems: list[str] = []
    steady = [p for p in result.points if p.at >= warmup_s]
    if len(steady) < 6:
        return {"samples": len(result.points)}, [f"only {len(steady)} samples after the {warmup_s:g} s warm-up"]
    first, last = _thirds(steady)
    start, end = steady[0], steady[-1]
    rss_first = statistics.median(p.rss_mb for p in first)
    rss_last = statistics.median(p.rss_mb for p in last)
    cpu_first, cpu_last = _cpu_pct(first), _cpu_pct(last)
    counted = [p for p in steady if p.frames is not None]
    fps = ((counted[-1].frames - counted[0].frames) / (counted[-1].at - counted[0].at)
           if len(counted) >= 2 and counted[-1].at > counted[0].at else 0.0)
    figures: dict[str, Any] = {
        "seconds": round(result.points[-1].at, 1) if result.points else 0.0,
        "warmup_s": warmup_s,
        "samples": len(steady),
        "rss_mb": {"start": start.rss_mb, "end": end.rss_mb, "first_third_median": rss_first,
                   "last_third_median": rss_last, "growth": round(rss_last - rss_first, 2),
                   "max": max(p.rss_mb for p in steady)},
        "cpu_pct_one_core": {"whole": round(_cpu_pct(steady), 2), "first_third": round(cpu_first, 2),
                             "last_third": round(cpu_last, 2)},
        "threads": {"start": start.threads, "end": end.threads, "min": min(p.threads for p in steady),
                    "max": max(p.threads for p in steady)},
        "fds": {"start": start.fds, "end": end.fds, "min": min(p.fds for p in steady),
                "max": max(p.fds for p in steady)},
        "frames_per_s": round(fps, 2),
        "pipeline_fps": result.pipeline_fps,
        "history_rows": {"moods": result.moods, "tracks": result.tracks},
        "commands": result.commands,
        "exit_code": result.exit_code,
        "stop_s": round(result.stop_s, 2) if result.stop_s is not None else None,
    }
    if rss_last - rss_first > bounds.rss_growth_mb:
        problems.append(f"RSS grew {rss_last - rss_first:.1f} MB (bound {bounds.rss_growth_mb:g} MB)")
    if cpu_last > bounds.cpu_growth * cpu_first + bounds.cpu_slack_pct:
        problems.append(f"CPU rose from {cpu_first:.1f} % to {cpu_last:.1f} % of a core")
    for key, spread in (("threads", bounds.thread_spread), ("fds", bounds.fd_spread)):
        seen = figures[key]
        if seen["max"] - seen["min"] > spread:
            problems.append(f"{key} ranged {seen['min']}..{seen['max']} (bound: spread {spread})")
    if fps < bounds.min_fps_share * result.pipeline_fps:
        problems.append(f"processed {fps:.2f} frames/s, below {bounds.min_fps_share:.0%} of {result.pipeline_fps:g}")
    if not result.alive_to_the_end:
        problems.append("the daemon died during the soak")
    if result.exit_code != 0:
        problems.append(f"SIGTERM ended it with exit code {result.exit_code}")
    if result.commands.get("unanswered"):
        problems.append(f"{result.commands['unanswered']} commands got no answer")
    if result.moods < 2:
        problems.append(f"only {result.moods} mood changes recorded: the cycle did not run")
    if result.problems_in_log:
        problems.append(f"{len(result.problems_in_log)} ERROR/Traceback lines, first: {result.problems_in_log[0]}")
    return figures, problems


def _print_point(point: Point, every: int, counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] == 1 or counter[0] % every == 0:
        frames = "-" if point.frames is None else str(point.frames)
        print(f"{point.at:8.1f} s  rss {point.rss_mb:7.1f} MB  cpu {point.cpu_s:8.2f} s  threads {point.threads:3d}  "
              f"fds {point.fds:3d}  frames {frames:>7}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the daemon runs after READY")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="samples left out of the verdict (default: a tenth of the run, at least 15 s)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--print-every", type=int, default=10, help="print every Nth sample")
    parser.add_argument("--track-s", type=float, default=20.0, help="length of the fake Spotify's tracks, s")
    parser.add_argument("--out", help="write the figures, the verdict and every sample here as JSON")
    parser.add_argument("--workdir", help="keep the run's files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    warmup_s = args.warmup_minutes * 60 if args.warmup_minutes is not None else max(15.0, seconds / 10)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="moodbox-soak-"))
    print(f"soak: {seconds:g} s after READY, samples every {args.interval:g} s, warm-up {warmup_s:g} s; "
          f"files in {workdir}", flush=True)
    counter = [0]
    result = run_soak(workdir, seconds, interval_s=args.interval, track_s=args.track_s,
                      on_point=lambda p: _print_point(p, args.print_every, counter))
    figures, problems = verdict(result, warmup_s)
    print(json.dumps(figures, indent=2))
    print("verdict: " + ("PASS: RSS, CPU, threads and open files stayed flat" if not problems
                         else "FAIL\n  - " + "\n  - ".join(problems)))
    if args.out:
        Path(args.out).write_text(json.dumps({"figures": figures, "problems": problems,
                                              "points": [asdict(p) for p in result.points]}, indent=1))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
