"""moodbox doctor: every check's pass and fail paths, with real parts where this machine has them.

The camera is a real replay camera, MQTT a real mosquitto, Spotify the fake
Web API driven by the real spotipy, the model a real TFLite file, systemctl a
script printing what systemd prints. Only the I2C bus, which this machine
lacks, is a stand-in beyond the "no bus" case.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from broker import Broker, free_port
from conftest import REPO
from fake_spotify import FakeSpotify

from device.config import StateConfig, parse_config
from device.doctor import (
    Result,
    check_camera,
    check_display,
    check_model,
    check_mqtt,
    check_service,
    check_spotify,
    format_results,
)

FACE = REPO / "tests" / "fixtures" / "face_640x480.jpg"


def config_from(tmp_path: Path, text: str = ""):
    return parse_config(textwrap.dedent(text), "test.toml", tmp_path)


# -- service ----------------------------------------------------------------------------


def fake_systemctl(tmp_path: Path, props: dict[str, str], rc: int = 0) -> str:
    """An executable that answers `systemctl show` like systemd 252 does."""
    script = tmp_path / "systemctl"
    body = "".join(f"{k}={v}\n" for k, v in props.items())
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{body}EOF\nexit {rc}\n")
    script.chmod(0o755)
    return str(script)


RUNNING = {"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "NRestarts": "0",
           "WatchdogUSec": "30s", "WatchdogTimestampMonotonic": "97000000",
           "ExecMainStartTimestampMonotonic": "10000000", "Result": "success"}
NOW_US = 100_000_000


def service(tmp_path: Path, **changes: str) -> Result:
    return check_service(fake_systemctl(tmp_path, {**RUNNING, **changes}), booted=True, monotonic_us=lambda: NOW_US)


def test_service_active_with_a_fresh_watchdog(tmp_path):
    result = service(tmp_path)
    assert result.status == "ok"
    assert result.detail == "moodbox.service is active (running), watchdog pinged 3 s ago (limit 30 s)"


def test_service_restarts_are_reported(tmp_path):
    result = service(tmp_path, NRestarts="4", WatchdogUSec="1min 30s")
    assert result.status == "ok"
    assert result.detail.endswith("(limit 90 s), restarted 4 time(s)")


def test_service_with_a_stale_watchdog_fails(tmp_path):
    result = service(tmp_path, WatchdogTimestampMonotonic="40000000")
    assert result.status == "fail"
    assert "last watchdog ping was 60 s ago (limit 30 s)" in result.detail
    assert "journalctl -u moodbox" in result.fix


def test_service_that_never_pinged_fails(tmp_path):
    result = service(tmp_path, WatchdogTimestampMonotonic="0")
    assert result.status == "fail" and "has not pinged its watchdog in 90 s" in result.detail


def test_failed_service(tmp_path):
    result = service(tmp_path, ActiveState="failed", SubState="failed", Result="watchdog", NRestarts="5")
    assert result.status == "fail"
    assert result.detail == "moodbox.service is failed (failed), last result: watchdog, restarted 5 time(s)"
    assert result.fix.startswith("sudo systemctl start moodbox")


def test_service_not_installed(tmp_path):
    result = check_service(fake_systemctl(tmp_path, {"LoadState": "not-found", "ActiveState": "inactive"}),
                           booted=True)
    assert result.status == "fail" and "not installed" in result.detail and "install.sh" in result.fix


def test_without_systemd_the_service_check_says_so(tmp_path):
    result = check_service(fake_systemctl(tmp_path, RUNNING), booted=False)
    assert result.status == "skip" and "systemd is not running" in result.detail


# -- camera ------------------------------------------------------------------------------------


def replay_config(tmp_path: Path, folder: Path):
    return config_from(tmp_path, f"""
        [camera]
        source = "replay"
        path = "{folder}"
        fps = 10.0
    """)


def test_camera_delivers_frames_from_a_replay_folder(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(FACE, frames / "0001.jpg")
    result = check_camera(replay_config(tmp_path, frames), timeout_s=5)
    assert result.status == "ok", result
    assert "640x480 frames arriving" in result.detail


def test_camera_with_nothing_to_replay_fails_with_a_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = check_camera(replay_config(tmp_path, empty), timeout_s=1)
    assert result.status == "fail"
    assert result.detail.startswith("cannot open the camera (replay)")
    assert "[camera] path" in result.fix


def test_pi_camera_missing_names_the_cable_fix(tmp_path):
    config = config_from(tmp_path, '[camera]\nsource = "picamera2"\n')
    result = check_camera(config, timeout_s=1)
    assert result.status == "fail" and "rpicam-hello --list-cameras" in result.fix


def test_camera_held_by_the_running_service_is_not_opened(tmp_path):
    def opener(*args, **kwargs):
        raise AssertionError("doctor must not grab the camera from the running service")

    running = Result("service", "ok", "moodbox.service is active")
    result = check_camera(config_from(tmp_path), opener=opener, service=running)
    assert result.status == "ok" and "in use by moodbox.service" in result.detail


# -- display -------------------------------------------------------------------------------------


def i2c_dir(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "i2c-1").touch()
    return dev


def test_no_i2c_bus(tmp_path):
    result = check_display(config_from(tmp_path), dev_dir=tmp_path)
    assert result.status == "fail"
    assert result.detail == f"no I2C bus {tmp_path / 'i2c-1'}"
    assert "raspi-config nonint do_i2c 0" in result.fix


def test_no_i2c_bus_on_this_machine():
    if Path("/dev/i2c-1").exists():
        pytest.skip("this machine has /dev/i2c-1")
    result = check_display(parse_config("", "default"))
    assert result.status == "fail" and result.detail == "no I2C bus /dev/i2c-1"


def test_display_answers(tmp_path):
    asked = []
    result = check_display(config_from(tmp_path), probe=lambda port, address: asked.append((port, address)),
                           dev_dir=i2c_dir(tmp_path))
    assert asked == [(1, 0x3C)]
    assert result.status == "ok" and result.detail.startswith("ssd1306 at 0x3c on")


def test_nothing_at_the_address_suggests_the_other_one(tmp_path):
    def probe(port, address):
        raise OSError(errno.EREMOTEIO, "Remote I/O error")

    result = check_display(config_from(tmp_path), probe=probe, dev_dir=i2c_dir(tmp_path))
    assert result.status == "fail"
    assert "nothing answers" in result.detail and "Remote I/O error" in result.detail
    assert "i2cdetect -y 1" in result.fix and "address = 0x3d" in result.fix


def test_i2c_permission_denied_names_the_group(tmp_path):
    def probe(port, address):
        raise PermissionError(errno.EACCES, "Permission denied")

    result = check_display(config_from(tmp_path), probe=probe, dev_dir=i2c_dir(tmp_path))
    assert result.status == "fail" and "group i2c" in result.fix


@pytest.mark.parametrize("text", ["[display]\nenabled = false\n", '[display]\ndriver = "dummy"\n'])
def test_display_skipped_when_off_or_virtual(tmp_path, text):
    assert check_display(config_from(tmp_path, text), dev_dir=tmp_path).status == "skip"


# -- model ----------------------------------------------------------------------------------------


def model_config(tmp_path: Path, tiny_dir: Path):
    for suffix in (".tflite", ".json"):
        shutil.copyfile(tiny_dir / f"tiny_int8{suffix}", tmp_path / f"emotion_int8{suffix}")
    return config_from(tmp_path, '[model]\npath = "emotion_int8.tflite"\n')


def test_model_loads_and_matches_its_metadata(tmp_path, tiny_dir):
    result = check_model(model_config(tmp_path, tiny_dir))
    assert result.status == "ok", result
    assert "matches its metadata" in result.detail


def test_tampered_model_fails_on_its_sha256(tmp_path, tiny_dir):
    config = model_config(tmp_path, tiny_dir)
    model = tmp_path / "emotion_int8.tflite"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    result = check_model(config)
    assert result.status == "fail" and "sha256" in result.detail
    assert str(model) in result.fix


def test_missing_model_fails(tmp_path):
    result = check_model(config_from(tmp_path, '[model]\npath = "nowhere.tflite"\n'))
    assert result.status == "fail" and "nowhere" in result.detail


# -- Spotify ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_spotify():
    with FakeSpotify() as spotify:
        yield spotify


def spotify_config(tmp_path: Path, fake: FakeSpotify, **overrides):
    base = config_from(tmp_path)
    return base.model_copy(update={"spotify": fake.spotify_config(**overrides),
                                   "state": StateConfig(dir=str(tmp_path / "state"))})


def test_spotify_logged_in_and_device_visible(tmp_path, fake_spotify):
    fake_spotify.add_device("Kitchen")
    fake_spotify.add_device("MoodBox")
    fake_spotify.login(tmp_path / "state")
    result = check_spotify(spotify_config(tmp_path, fake_spotify))
    assert result.status == "ok", result
    assert result.detail == "logged in as Test Listener; device 'MoodBox' visible (idle)"
    # Read-only: the doctor never moves playback to the box.
    assert fake_spotify.count("PUT") == 0


def test_spotify_without_login(tmp_path, fake_spotify):
    result = check_spotify(spotify_config(tmp_path, fake_spotify))
    assert result.status == "fail" and "login_needed" in result.detail
    assert "moodbox spotify login" in result.fix


def test_spotify_device_missing_lists_what_spotify_sees(tmp_path, fake_spotify):
    fake_spotify.add_device("Kitchen")
    fake_spotify.login(tmp_path / "state")
    result = check_spotify(spotify_config(tmp_path, fake_spotify))
    assert result.status == "fail"
    assert "no device named 'moodbox' (Spotify sees: 'Kitchen')" in result.detail
    assert "raspotify" in result.fix


def test_spotify_needs_premium(tmp_path):
    with FakeSpotify(premium=False) as fake:
        fake.add_device("moodbox")
        fake.login(tmp_path / "state")
        result = check_spotify(spotify_config(tmp_path, fake))
    assert result.status == "fail" and "Premium" in result.detail


def test_spotify_disabled_is_skipped(tmp_path):
    assert check_spotify(config_from(tmp_path, "[spotify]\nenabled = false\n")).status == "skip"


# -- MQTT -------------------------------------------------------------------------------------------


def mqtt_config(tmp_path: Path, port: int, username: str = "", password: str = ""):
    lines = ["[mqtt]", "enabled = true", 'host = "127.0.0.1"', f"port = {port}", f'username = "{username}"']
    if password:
        lines.append(f'password = "{password}"')
    return config_from(tmp_path, "\n".join(lines) + "\n")


def test_mqtt_connects(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        result = check_mqtt(mqtt_config(tmp_path, broker.port))
    assert result.status == "ok" and result.detail == f"connected to 127.0.0.1:{broker.port} anonymously"


def test_mqtt_authenticates(tmp_path):
    with Broker(tmp_path / "broker", users={"box": "right"}) as broker:
        good = check_mqtt(mqtt_config(tmp_path, broker.port, "box", "right"))
        bad = check_mqtt(mqtt_config(tmp_path, broker.port, "box", "wrong"))
    assert good.status == "ok" and "as 'box'" in good.detail
    assert bad.status == "fail" and "refused user 'box'" in bad.detail
    assert "password" in bad.fix and "username" in bad.fix


def test_mqtt_unreachable(tmp_path):
    port = free_port()  # nothing listens there
    result = check_mqtt(mqtt_config(tmp_path, port), timeout_s=2)
    assert result.status == "fail" and f"127.0.0.1:{port}" in result.detail
    assert "systemctl status mosquitto" in result.fix


def test_mqtt_disabled_is_skipped(tmp_path):
    assert check_mqtt(config_from(tmp_path)).status == "skip"


# -- output and the command ------------------------------------------------------------------------------


def test_text_output_marks_and_fixes():
    text = format_results([
        Result("service", "skip", "systemd is not running"),
        Result("display", "fail", "no I2C bus /dev/i2c-1", "turn I2C on"),
        Result("model", "ok", "loads"),
    ])
    assert text.splitlines() == [
        "– service  systemd is not running",
        "✖ display  no I2C bus /dev/i2c-1",
        "           fix: turn I2C on",
        "✔ model    loads",
        "1 problem(s) found",
    ]


def moodbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "device", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_doctor_command_json_and_exit_code(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(FACE, frames / "0001.jpg")
    config = tmp_path / "config.toml"
    config.write_text(f'[camera]\nsource = "replay"\npath = "{frames}"\n[model]\npath = "missing.tflite"\n'
                      "[spotify]\nenabled = false\n[display]\nenabled = false\n")
    result = moodbox("doctor", "--config", str(config), "--json", "--timeout", "5")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is False
    assert statuses["camera"] == "ok" and statuses["model"] == "fail"
    assert statuses["display"] == statuses["spotify"] == statuses["mqtt"] == "skip"
    assert list(statuses) == ["service", "camera", "display", "model", "spotify", "mqtt"]


def test_doctor_command_with_a_broken_config_exits_78(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[camera]\nsourse = \"replay\"\n")
    result = moodbox("doctor", "--config", str(config))
    assert result.returncode == 78
    assert "sourse" in result.stderr and "moodbox config check" in result.stderr
