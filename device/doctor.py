"""``moodbox doctor``: check each part of the box and say what to do about what is wrong.

Each check is a small function taking the config and, where it touches the
outside world, the thing it talks to (a camera opener, an I2C probe, a
Spotify player, a ``systemctl``), so tests can drive both outcomes with real
software. A check never raises: whatever goes wrong becomes a failed
:class:`Result` with a fix to try. Checks read, never change: no playback is
moved, no config or model is touched.

Run as root, the checks drop to the service user first, so they see what the
service sees (its groups for the camera and I2C, its files), and a refreshed
Spotify token stays readable by the service.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from device.config import EX_CONFIG, Config, ConfigError, load_config

__all__ = [
    "Result",
    "check_camera",
    "check_display",
    "check_model",
    "check_mqtt",
    "check_service",
    "check_spotify",
    "format_results",
    "register",
    "run_checks",
]

log = logging.getLogger(__name__)

SERVICE = "moodbox.service"
SERVICE_USER = "moodbox"
MARKS = {"ok": "✔", "fail": "✖", "skip": "–"}
_SHOW = ("LoadState", "ActiveState", "SubState", "NRestarts", "WatchdogUSec", "WatchdogTimestampMonotonic",
         "ExecMainStartTimestampMonotonic", "Result")
_UNITS_US = {"us": 1, "usec": 1, "ms": 1_000, "msec": 1_000, "s": 1_000_000, "sec": 1_000_000,
             "min": 60_000_000, "h": 3_600_000_000, "hr": 3_600_000_000, "d": 86_400_000_000}


@dataclass(frozen=True)
class Result:
    name: str
    status: Literal["ok", "fail", "skip"]
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def _ok(name: str, detail: str) -> Result:
    return Result(name, "ok", detail)


def _fail(name: str, detail: str, fix: str) -> Result:
    return Result(name, "fail", detail, fix)


def _skip(name: str, detail: str) -> Result:
    return Result(name, "skip", detail)


# -- service ----------------------------------------------------------------------


def _timespan_us(text: str) -> int:
    """systemctl's '1min 30s' / '500ms' / '0' / 'infinity' -> microseconds (0 for none)."""
    text = text.strip()
    if text in ("", "0", "infinity"):
        return 0
    if text.isdigit():
        return int(text)
    total = 0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        total += int(float(number) * _UNITS_US.get(unit, 0))
    return total


def _monotonic_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def check_service(
    systemctl: str | None = None,
    booted: bool | None = None,
    monotonic_us: Callable[[], int] = _monotonic_us,
    timeout_s: float = 10.0,
) -> Result:
    """moodbox.service is active and its watchdog was pinged within WatchdogSec."""
    name = "service"
    systemctl = systemctl or shutil.which("systemctl")
    if booted is None:
        booted = Path("/run/systemd/system").is_dir()  # what sd_booted() checks
    if systemctl is None or not booted:
        return _skip(name, "systemd is not running on this machine (not the box?): nothing to check")
    try:
        shown = subprocess.run([systemctl, "show", SERVICE, "-p", ",".join(_SHOW)], capture_output=True,
                               text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _fail(name, f"systemctl show failed: {exc}", "check systemd: systemctl status")
    props = dict(line.partition("=")[::2] for line in shown.stdout.splitlines() if "=" in line)
    if shown.returncode != 0 or props.get("LoadState") in (None, "not-found"):
        return _fail(name, f"{SERVICE} is not installed", "install the box: sudo ./install.sh")
    logs = "see why: journalctl -u moodbox -b -n 50"
    state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
    restarts = int(props.get("NRestarts") or 0)
    restarted = f", restarted {restarts} time(s)" if restarts else ""
    if props.get("ActiveState") != "active":
        result = props.get("Result", "")
        why = f", last result: {result}" if result and result != "success" else ""
        return _fail(name, f"{SERVICE} is {state}{why}{restarted}", f"sudo systemctl start moodbox; {logs}")
    watchdog = _timespan_us(props.get("WatchdogUSec", "0"))
    if not watchdog:
        return _fail(name, f"{SERVICE} is {state} but has no watchdog", "reinstall the unit (WatchdogSec=30): "
                     "sudo ./install.sh")
    last = int(props.get("WatchdogTimestampMonotonic") or 0)
    started = int(props.get("ExecMainStartTimestampMonotonic") or 0)
    now = monotonic_us()
    if not last:
        since = (now - started) / 1e6 if started else 0.0
        return _fail(name, f"{SERVICE} is {state} but has not pinged its watchdog in {since:.0f} s{restarted}",
                     f"the loop is not running or no frames arrive; {logs}")
    age = (now - last) / 1e6
    if age > watchdog / 1e6:
        return _fail(name, f"{SERVICE} is {state} but its last watchdog ping was {age:.0f} s ago "
                     f"(limit {watchdog / 1e6:g} s){restarted}", f"systemd will restart it; {logs}")
    return _ok(name, f"{SERVICE} is {state}, watchdog pinged {age:.0f} s ago "
                     f"(limit {watchdog / 1e6:g} s){restarted}")


# -- camera ---------------------------------------------------------------------------


def _camera_fix(source: str) -> str:
    if source == "replay":
        return "check [camera] path: an existing video file or a folder of images"
    if source == "opencv":
        return ("check the USB camera: v4l2-ctl --list-devices; the user needs group video; "
                "set [camera] path to its index or /dev/videoN")
    return ("check the ribbon cable (both ends, contacts the right way round) and run: rpicam-hello "
            "--list-cameras; camera_auto_detect=1 must be in /boot/firmware/config.txt; "
            "a camera held by another program (sudo systemctl stop moodbox) cannot be opened")


def check_camera(config: Config, opener: Callable[..., Any] | None = None, timeout_s: float = 5.0,
                 service: Result | None = None) -> Result:
    """The camera opens and delivers a frame within ``timeout_s``.

    When the service is running with a fresh watchdog it holds the camera (a
    Pi camera serves one process) and its pings prove frames are arriving.
    """
    name = "camera"
    cam = config.camera
    if service is not None and service.status == "ok":
        return _ok(name, f"in use by {SERVICE}, whose watchdog pings show frames arriving")
    fix = _camera_fix(cam.source)
    if opener is None:
        try:
            from device.camera import open_camera as opener
        except ImportError as exc:
            return _fail(name, f"camera support is not installed: {exc}", "reinstall: sudo ./install.sh")
    path = config.resolve(cam.path) if cam.path else None
    try:
        camera = opener(cam, path=path)
    except Exception as exc:  # CameraError and whatever a driver raises
        return _fail(name, f"cannot open the camera ({cam.source}): {exc}", fix)
    try:
        frame = camera.latest(timeout=timeout_s)
    except Exception as exc:
        return _fail(name, f"the camera opened but reading failed: {exc}", fix)
    finally:
        camera.close()
    if frame is None:
        return _fail(name, f"the camera opened but sent no frame within {timeout_s:g} s", fix)
    height, width = frame.image.shape[:2]
    return _ok(name, f"{getattr(camera, 'name', cam.source)}: {width}x{height} frames arriving")


# -- display ----------------------------------------------------------------------------


def check_display(config: Config, probe: Callable[[int, int], None] | None = None,
                  dev_dir: Path = Path("/dev")) -> Result:
    """The OLED acknowledges its I2C address (an i2cdetect-style quick write)."""
    name = "display"
    cfg = config.display
    if not cfg.enabled:
        return _skip(name, "skipped: [display] enabled = false")
    if cfg.driver not in ("ssd1306", "sh1106"):
        return _skip(name, f"skipped: [display] driver = {cfg.driver!r} needs no hardware")
    bus = dev_dir / f"i2c-{cfg.i2c_port}"
    where = f"{cfg.driver} at {cfg.address:#04x} on {bus}"
    if not bus.exists():
        return _fail(name, f"no I2C bus {bus}",
                     "turn I2C on: sudo raspi-config nonint do_i2c 0, then reboot (or add dtparam=i2c_arm=on "
                     "to /boot/firmware/config.txt); check [display] i2c_port")
    if probe is None:
        try:
            from device.display.device import probe
        except ImportError as exc:
            return _fail(name, f"display support is not installed: {exc}", "reinstall: sudo ./install.sh")
    try:
        probe(cfg.i2c_port, cfg.address)
    except ImportError as exc:
        return _fail(name, f"smbus2 is missing: {exc}", "reinstall: sudo ./install.sh")
    except PermissionError:
        return _fail(name, f"no permission to use {bus}", f"the user needs group i2c: sudo usermod -a -G i2c "
                     f"{pwd.getpwuid(os.geteuid()).pw_name}, then log in again")
    except OSError as exc:
        other = 0x3D if cfg.address == 0x3C else 0x3C
        return _fail(name, f"nothing answers: {where} ({exc.strerror or exc})",
                     f"check the wiring: SDA to pin 3, SCL to pin 5, VCC to 3.3 V (pin 1), GND (pin 6); "
                     f"i2cdetect -y {cfg.i2c_port} lists what answers; if it shows {other:x}, "
                     f"set [display] address = {other:#04x}")
    return _ok(name, f"{where} answers")


# -- model --------------------------------------------------------------------------------


def check_model(config: Config, load: Callable[[Config], Any] | None = None) -> Result:
    """The model loads and passes every check against its metadata, sha256 included."""
    name = "model"
    path = config.resolve(config.model.path)
    fix = (f"put a model and its metadata JSON at {path} (sudo ./install.sh copies the repo's models/), "
           "or point [model] path at one")
    if load is None:
        try:
            from device.emotion import EmotionClassifier
        except ImportError as exc:
            return _fail(name, f"the classifier cannot be imported: {exc}", "reinstall: sudo ./install.sh")
        load = EmotionClassifier.from_config
    try:
        classifier = load(config)
    except Exception as exc:  # ModelError says which check failed; a runtime error is as fatal
        return _fail(name, str(exc), fix)
    info = classifier.info
    accuracy = f", PrivateTest accuracy {info.accuracy:.1%}" if info.accuracy is not None else ""
    return _ok(name, f"{info.name} {info.version} loads on {info.runtime}; sha256 {info.sha256[:12]}… matches "
                     f"its metadata{accuracy}")


# -- Spotify ---------------------------------------------------------------------------------


def check_spotify(config: Config, player: Any = None) -> Result:
    """The saved login works (refreshing the token if due) and the Connect device is visible."""
    name = "spotify"
    cfg = config.spotify
    if not cfg.enabled:
        return _skip(name, "skipped: [spotify] enabled = false")
    if player is None:
        try:
            from device.music.spotify import SpotifyPlayer
        except ImportError as exc:
            return _fail(name, f"Spotify support is not installed: {exc}", "reinstall: sudo ./install.sh")
        player = SpotifyPlayer(cfg, config.resolve(config.state.dir))
    login = "run: moodbox spotify login (as the service user: sudo -u moodbox moodbox spotify login)"
    account = player.me()
    if account is None:
        health = player.health
        fix = login if health.state == "login_needed" else "check the network, then try again"
        return _fail(name, f"Spotify: {health.state}: {health.detail}", fix)
    who = account.get("display_name") or account.get("id", "?")
    if account.get("product") not in (None, "premium"):
        return _fail(name, f"logged in as {who}, a {account.get('product')} account: Spotify lets only Premium "
                           "accounts control playback", "log in with a Premium account: moodbox spotify login")
    devices = player.devices()
    if devices is None:
        return _fail(name, f"logged in as {who}, but listing devices failed: {player.health.detail}",
                     "check the network, then try again")
    wanted = cfg.device_name.casefold()
    device = next((d for d in devices if (d.get("name") or "").casefold() == wanted), None)
    if device is None:
        seen = ", ".join(repr(d.get("name")) for d in devices) or "none"
        return _fail(name, f"logged in as {who}; no device named {cfg.device_name!r} (Spotify sees: {seen})",
                     "start the receiver (sudo systemctl restart raspotify) and log it in once (see "
                     "./install.sh --with-raspotify), or set [spotify] device_name to one listed")
    if device.get("is_restricted"):
        return _fail(name, f"{device.get('name')!r} cannot be remote-controlled (restricted device)",
                     "pick another device in [spotify] device_name")
    active = "active" if device.get("is_active") else "idle"
    return _ok(name, f"logged in as {who}; device {device.get('name')!r} visible ({active})")


# -- MQTT ---------------------------------------------------------------------------------------


def check_mqtt(config: Config, timeout_s: float = 5.0) -> Result:
    """The broker accepts a connection with the configured credentials (and TLS)."""
    name = "mqtt"
    cfg = config.mqtt
    if not cfg.enabled:
        return _skip(name, "skipped: [mqtt] enabled = false")
    try:
        from device.mqtt_cli import EX_NOPERM, BrokerError, connect_once
        from device.outputs.mqtt import box_id_for
    except ImportError as exc:
        return _fail(name, f"MQTT support is not installed: {exc}", "reinstall: sudo ./install.sh")
    try:
        client = connect_once(config, box_id_for(config), timeout_s)
    except BrokerError as exc:
        if exc.code == EX_NOPERM:
            fix = "check [mqtt] username and the password (secrets.toml beside the config, or MOODBOX_MQTT_PASSWORD)"
        else:
            fix = (f"check [mqtt] host and port, that the broker runs (sudo systemctl status mosquitto) and "
                   f"answers from here: mosquitto_sub -h {cfg.host} -p {cfg.port} -t '$SYS/#' -C 1")
        return _fail(name, str(exc), fix)
    except (ValueError, OSError) as exc:  # a missing TLS file, a failed TLS handshake
        return _fail(name, str(exc), "check [mqtt] tls_ca, tls_cert and tls_key")
    client.disconnect()
    client.loop_stop()
    tls = " over TLS" if cfg.tls or cfg.tls_ca or cfg.tls_cert else ""
    who = f" as {cfg.username!r}" if cfg.username else " anonymously"
    return _ok(name, f"connected to {cfg.host}:{cfg.port}{tls}{who}")


# -- all of them -------------------------------------------------------------------------------


def _guarded(name: str, check: Callable[[], Result]) -> Result:
    try:
        return check()
    except Exception as exc:  # a bug in one check must not hide the others
        log.debug("check %s crashed", name, exc_info=True)
        return _fail(name, f"the check itself failed: {type(exc).__name__}: {exc}",
                     "report this; the other checks are still valid")


def run_checks(config: Config, timeout_s: float = 5.0) -> list[Result]:
    service = _guarded("service", check_service)
    return [
        service,
        _guarded("camera", lambda: check_camera(config, timeout_s=timeout_s, service=service)),
        _guarded("display", lambda: check_display(config)),
        _guarded("model", lambda: check_model(config)),
        _guarded("spotify", lambda: check_spotify(config)),
        _guarded("mqtt", lambda: check_mqtt(config, timeout_s=timeout_s)),
    ]


def format_results(results: Sequence[Result]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"{MARKS[r.status]} {r.name:<{width}}  {r.detail}")
        if r.fix:
            lines.append(f"  {'':<{width}}  fix: {r.fix}")
    failed = sum(r.failed for r in results)
    lines.append("all good" if not failed else f"{failed} problem(s) found")
    return "\n".join(lines)


def _drop_to(user: str) -> str | None:
    """Become ``user`` (groups included) when running as root; returns the name, or None if unchanged."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    os.setgroups(os.getgrouplist(user, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    return user


def cmd_doctor(args: argparse.Namespace) -> int:
    became = _drop_to(args.user)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("fix: correct the config (moodbox config check shows every problem)", file=sys.stderr)
        return EX_CONFIG
    results = run_checks(config, timeout_s=args.timeout)
    if args.json:
        print(json.dumps({"ok": not any(r.failed for r in results), "user": became or pwd.getpwuid(os.geteuid())
                          .pw_name, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        if became:
            print(f"(checking as the service user {became})")
        print(format_results(results))
    return 1 if any(r.failed for r in results) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser("doctor", help="check camera, display, model, Spotify, MQTT and the service")
    doctor.add_argument("--config", help="config file (default /etc/moodbox/config.toml, else the repo's)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a frame or the broker")
    doctor.add_argument("--user", default=SERVICE_USER,
                        help="when run as root, check as this user (default: the service's, moodbox)")
    doctor.set_defaults(func=cmd_doctor)
