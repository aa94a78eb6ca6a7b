"""The soak (issue 7): the real daemon's RSS, CPU, threads and open files stay flat.

``test_soak_60s_ci`` is CI's short version of ``python -m bench.soak --minutes 30``
(same scenario, same bounds, see bench/soak.py): about 62 s of wall time.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from conftest import REPO
from daemon_harness import MODEL

sys.path.insert(0, str(REPO))  # bench/ is a tool of the checkout, not part of the installed package
from bench.soak import Bounds, Point, SoakResult, run_soak, verdict

CI_SECONDS = 60.0
CI_WARMUP_S = 15.0


@pytest.mark.slow
@pytest.mark.skipif(not MODEL.exists(), reason="models/emotion_int8.tflite has not been shipped yet")
def test_soak_60s_ci(tmp_path):
    """CI soak, 60 s: replay camera, fake Spotify, real mosquitto, a command every 5 s; sampled every second."""
    result = run_soak(tmp_path, CI_SECONDS)
    figures, problems = verdict(result, CI_WARMUP_S)
    assert not problems, f"{problems}\n{figures}"
    assert figures["commands"]["ok"] >= 5 and result.tracks >= 1


def _steady(seconds: int = 60, rss=lambda t: 150.0, threads=lambda t: 13, fds=lambda t: 11) -> SoakResult:
    """A synthetic soak at 5 % of a core and 5 frames/s, for checking the verdict itself."""
    points = [Point(float(t), 0.05 * t, rss(t), threads(t), fds(t), 5 * t) for t in range(1, seconds + 1)]
    return SoakResult(seconds, 5.0, points, exit_code=0, stop_s=0.3, alive_to_the_end=True, moods=4, tracks=2,
                      commands={"ok": 10, "error": 0, "unanswered": 0})


def test_verdict_passes_a_flat_run():
    figures, problems = verdict(_steady(), 15.0)
    assert problems == []
    assert figures["rss_mb"]["growth"] == 0 and figures["threads"]["max"] == 13
    assert figures["frames_per_s"] == 5.0 and figures["cpu_pct_one_core"]["whole"] == pytest.approx(5.0)


@pytest.mark.parametrize(("result", "expected"), [
    (_steady(rss=lambda t: 150.0 + 0.2 * t), "RSS grew"),  # 200 KB/s: a leak
    (_steady(threads=lambda t: 13 + t // 20), "threads ranged"),  # a thread per 20 s
    (_steady(fds=lambda t: 11 + t // 5), "fds ranged"),  # a socket never closed
    (replace(_steady(), points=[replace(p, cpu_s=0.05 * p.at + 0.002 * p.at ** 2) for p in _steady().points]),
     "CPU rose"),  # each pass slower than the last
    (replace(_steady(), points=[replace(p, frames=p.frames // 10) for p in _steady().points]), "frames/s"),
    (replace(_steady(), exit_code=1), "exit code 1"),
    (replace(_steady(), alive_to_the_end=False), "died"),
    (replace(_steady(), problems_in_log=["... ERROR device.app: boom"]), "ERROR/Traceback"),
])
def test_verdict_catches_what_is_not_flat(result, expected):
    _, problems = verdict(result, 15.0, Bounds())
    assert any(expected in problem for problem in problems), problems
