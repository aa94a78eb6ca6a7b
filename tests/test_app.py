"""The daemon end to end: real replay camera, real Haar, the real shipped model, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from device.app import Daemon
from device.cli import build_daemon
from device.config import parse_config
from device.events import CameraState, Command, CommandResult, ComponentState, ModelLoaded, MoodChanged, PipelineStats
from device.outputs import OutputContext
from recorder import Recorder

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "emotion_int8.tflite"
FIXTURES = REPO / "tests" / "fixtures"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="models/emotion_int8.tflite has not been shipped yet")


def face_folder(tmp_path: Path, frames: int = 10) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    image = cv2.imread(str(FIXTURES / "face_640x480.jpg"))
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), image)
    return folder


def config_for(tmp_path: Path, frames: Path, extra: str = "") -> str:
    return f"""
[camera]
source = "replay"
path = "{frames}"
fps = 20.0
loop = true
read_timeout_s = 0.5
reopen_max_s = 1.0
[model]
path = "{MODEL}"
[pipeline]
fps = 10.0
stats_interval_s = 1.0
[mood]
min_dwell_s = 1.0
smoothing_s = 0.5
no_face_s = 2.0
[state]
dir = "{tmp_path / 'state'}"
{extra}
"""


def start_daemon(tmp_path: Path, frames: Path | None = None) -> tuple[Daemon, Recorder, threading.Thread]:
    frames = frames or face_folder(tmp_path)
    config = parse_config(config_for(tmp_path, frames), "test.toml", tmp_path)
    recorder = Recorder()
    context = OutputContext(state_dir=tmp_path / "state", demo=True)
    daemon = build_daemon(config, context, extra_outputs=[recorder])
    daemon.parts.outputs = [o for o in daemon.parts.outputs if o.name in {"log", "recorder"}]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    return daemon, recorder, thread


@pytest.fixture
def running(tmp_path):
    daemon, recorder, thread = start_daemon(tmp_path)
    yield daemon, recorder
    daemon.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_a_face_becomes_a_stable_mood(running):
    daemon, recorder = running
    model = recorder.wait_event(lambda e: isinstance(e, ModelLoaded))
    assert model.sha256 and model.version
    change = recorder.wait_event(lambda e: isinstance(e, MoodChanged) and e.mood != "no_face")
    assert change.previous is None and 0.5 <= change.confidence <= 1.0
    assert abs(sum(change.probabilities.values()) - 1.0) < 1e-3
    stats = recorder.wait_event(lambda e: isinstance(e, PipelineStats) and e.frames > 5)
    assert stats.face_present and stats.faces > 0 and stats.fps > 0 and stats.classify_ms > 0


def test_privacy_switch_releases_camera_and_comes_back(running):
    daemon, recorder = running
    recorder.wait_event(lambda e: isinstance(e, CameraState) and e.state == "ok")
    daemon.bus.publish(Command("camera", False, "t1", "test"))
    result = recorder.wait_event(lambda e: isinstance(e, CommandResult) and e.command.transaction == "t1")
    assert result.ok
    recorder.wait_event(lambda e: isinstance(e, CameraState) and e.state == "off")
    assert daemon.camera is None
    frames_when_off = daemon.timings.frames
    time.sleep(0.5)
    assert daemon.timings.frames == frames_when_off
    daemon.bus.publish(Command("camera", True, "t2", "test"))
    recorder.wait_event(lambda e: isinstance(e, CommandResult) and e.command.transaction == "t2")
    deadline = time.monotonic() + 10
    while daemon.timings.frames == frames_when_off and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.timings.frames > frames_when_off


def test_corrupt_model_reload_is_refused_and_old_model_kept(running, tmp_path):
    daemon, recorder = running
    bad = tmp_path / "bad.tflite"
    shutil.copy(MODEL, bad)
    shutil.copy(MODEL.with_suffix(".json"), bad.with_suffix(".json"))
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    before = daemon.parts.classifier.info.sha256
    daemon.bus.publish(Command("reload_model", str(bad), "r1", "test"))
    result = recorder.wait_event(lambda e: isinstance(e, CommandResult) and e.command.transaction == "r1")
    assert not result.ok and "sha256" in result.error
    refused = recorder.wait_event(lambda e: isinstance(e, ComponentState) and e.component == "model")
    assert refused.error and "previous model" in refused.detail
    assert daemon.parts.classifier.info.sha256 == before
    frames = daemon.timings.frames
    deadline = time.monotonic() + 10
    while daemon.timings.frames < frames + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.timings.frames >= frames + 3  # still classifying with the old model


def test_mood_override_and_unowned_command(running):
    daemon, recorder = running
    daemon.bus.publish(Command("mood", ("sad", 1.0), "m1", "test"))
    assert recorder.wait_event(lambda e: isinstance(e, CommandResult) and e.command.transaction == "m1").ok
    change = recorder.wait_event(lambda e: isinstance(e, MoodChanged) and e.override)
    assert change.mood == "sad"
    daemon.bus.publish(Command("play", None, "p1", "test"))
    result = recorder.wait_event(lambda e: isinstance(e, CommandResult) and e.command.transaction == "p1")
    assert not result.ok and "not available" in result.error


def test_lost_camera_is_reported_and_recovers(tmp_path):
    frames = face_folder(tmp_path)
    daemon, recorder, thread = start_daemon(tmp_path, frames)
    try:
        recorder.wait_event(lambda e: isinstance(e, CameraState) and e.state == "ok")
        frames.rename(tmp_path / "away")
        lost = recorder.wait_event(lambda e: isinstance(e, CameraState) and e.state == "camera_lost")
        assert lost.detail
        assert thread.is_alive()
        seen = len(recorder.events)
        (tmp_path / "away").rename(frames)
        recorder.wait_event(lambda e: isinstance(e, CameraState) and e.state == "ok", after=seen)
    finally:
        daemon.stop()
        thread.join(5)


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.5)
    return sock


def _messages(sock: socket.socket, until, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
        if until(got):
            break
    return got


def test_sigterm_under_systemd_protocol(tmp_path):
    """The real process: READY over NOTIFY_SOCKET, watchdog pings, SIGTERM stops it within 2 s."""
    config = tmp_path / "config.toml"
    config.write_text(config_for(tmp_path, face_folder(tmp_path)))
    sock = _notify_socket(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen([sys.executable, "-m", "device", "run", "--config", str(config)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        got = _messages(sock, lambda m: "READY=1" in m and sum(x == "WATCHDOG=1" for x in m) >= 2, 60)
        assert "READY=1" in got, got
        assert sum(x == "WATCHDOG=1" for x in got) >= 2, got
        assert any(x.startswith("STATUS=") for x in got)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
        sock.close()
    output = process.stdout.read()
    assert code == 0, output
    assert elapsed < 2.0, f"stopped in {elapsed:.2f} s"
    assert "SIGTERM received" in output


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "device", "demo", "--out", str(out)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "fps" in line and "mood" in line]
    assert len(lines) >= 15, result.stdout
    assert any("face yes" in line for line in lines)
    assert any("face no" in line for line in lines)
    moods = {line.split("mood")[1].split()[0] for line in lines}
    assert moods - {"-", "no_face"}, f"no mood ever settled: {moods}"
    assert "no_face" in moods
    assert "done:" in result.stdout


def test_classify_photo_json(tmp_path):
    result = subprocess.run([sys.executable, "-m", "device", "classify", "--json",
                             str(FIXTURES / "face_640x480.jpg"), str(FIXTURES / "no_face_640x480.jpg")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    import json

    (face_image, empty) = json.loads(result.stdout)
    assert face_image["image"].endswith("face_640x480.jpg") and empty["faces"] == []
    (face,) = face_image["faces"]
    assert len(face["box"]) == 4 and face["box"][2] > 40
    assert set(face["probabilities"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert abs(sum(face["probabilities"].values()) - 1) < 0.01
    assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
