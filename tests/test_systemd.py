"""systemd integration: sd_notify on a real datagram socket, journal logging, and the unit file."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from device.systemd import Notifier, running_under_systemd, setup_logging

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "moodbox.service"
MAX_EXPOSURE = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notify_socket(tmp_path):
    """A bound AF_UNIX datagram socket standing in for systemd's; yields (path, receive)."""
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)

    def receive_all() -> list[str]:
        messages = []
        server.setblocking(False)
        try:
            while True:
                messages.append(server.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            server.settimeout(2)
        return messages

    yield str(path), receive_all
    server.close()


def environ(path: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": path, **extra}


# -- sd_notify ----------------------------------------------------------------


def test_ready_status_stopping_arrive_as_datagrams(notify_socket):
    path, receive = notify_socket
    notifier = Notifier.from_environment(environ(path))
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("running: mood happy (82%)")
    assert notifier.stopping("shutting down")
    assert receive() == ["READY=1", "STATUS=running: mood happy (82%)", "STOPPING=1\nSTATUS=shutting down"]
    notifier.close()


def test_ready_can_carry_a_status(notify_socket):
    path, receive = notify_socket
    Notifier.from_environment(environ(path)).ready("camera and model up")
    assert receive() == ["READY=1\nSTATUS=camera and model up"]


def test_status_text_cannot_inject_assignments(notify_socket):
    path, receive = notify_socket
    Notifier.from_environment(environ(path)).status("line one\nREADY=1")
    assert receive() == ["STATUS=line one READY=1"]


def test_abstract_socket_name_is_supported():
    name = f"moodbox-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(2)
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert server.recv(4096) == b"READY=1"


def test_without_notify_socket_everything_is_a_no_op():
    clock = Clock()
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "30000000"}, clock=clock)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog(progress=True) is False
    assert notifier.stopping() is False


def test_unsupported_socket_kind_disables_notifications(caplog):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert "not a unix socket" in caplog.text


def test_send_to_a_vanished_socket_is_logged_not_raised(tmp_path, caplog):
    path = tmp_path / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
    path.unlink()
    notifier = Notifier.from_environment(environ(str(path)))
    assert notifier.ready() is False
    assert notifier.status("still alive") is False
    assert caplog.text.count("systemd notification failed") == 1


# -- watchdog -------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(notify_socket):
    path, _ = notify_socket
    notifier = Notifier.from_environment(environ(path, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid())))
    assert notifier.watchdog_interval == 15.0


def test_watchdog_pings_at_the_interval_while_progressing(notify_socket):
    path, receive = notify_socket
    clock = Clock()
    notifier = Notifier.from_environment(environ(path, WATCHDOG_USEC="10000000"), clock=clock)
    sent_at = []
    # A loop at 5 passes/s for 30 s, each pass with a new frame.
    for _ in range(150):
        if notifier.watchdog(progress=True):
            sent_at.append(clock.now - 1000.0)
        clock.now += 0.2
    assert [round(t, 1) for t in sent_at] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert receive() == ["WATCHDOG=1"] * 6


def test_no_pings_while_stuck_then_pings_resume(notify_socket):
    path, receive = notify_socket
    clock = Clock()
    notifier = Notifier.from_environment(environ(path, WATCHDOG_USEC="30000000"), clock=clock)
    assert notifier.watchdog(progress=True)
    assert receive() == ["WATCHDOG=1"]
    # The camera stops delivering: the loop still runs, but reports no progress for 60 s.
    for _ in range(300):
        clock.now += 0.2
        assert notifier.watchdog(progress=False) is False
    assert receive() == []
    # Frames again: the next pass pings at once, since the interval has long passed.
    assert notifier.watchdog(progress=True)
    assert receive() == ["WATCHDOG=1"]


def test_progress_between_pings_counts_for_the_next_ping(notify_socket):
    path, receive = notify_socket
    clock = Clock()
    notifier = Notifier.from_environment(environ(path, WATCHDOG_USEC="2000000"), clock=clock)
    assert notifier.watchdog(progress=True)  # t=0
    clock.now += 0.5
    assert not notifier.watchdog(progress=True)  # a frame, but too early
    clock.now += 0.6
    assert notifier.watchdog(progress=False)  # due, and a frame arrived since the last ping
    clock.now += 1.1
    assert not notifier.watchdog(progress=False)  # due, but nothing happened since
    assert receive() == ["WATCHDOG=1", "WATCHDOG=1"]


def test_watchdog_meant_for_another_pid_is_ignored(notify_socket):
    path, receive = notify_socket
    notifier = Notifier.from_environment(environ(path, WATCHDOG_USEC="30000000", WATCHDOG_PID="1"))
    assert notifier.watchdog_interval is None
    assert notifier.watchdog(progress=True) is False
    assert notifier.ready()  # the rest of the protocol still works
    assert receive() == ["READY=1"]


@pytest.mark.parametrize("value", ["", "0", "soon"])
def test_bad_or_missing_watchdog_usec_arms_no_watchdog(notify_socket, value):
    path, _ = notify_socket
    assert Notifier.from_environment(environ(path, WATCHDOG_USEC=value)).watchdog_interval is None


# -- logging ----------------------------------------------------------------------


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_stderr_logging_outside_systemd(restore_root_logger):
    stream = io.StringIO()
    assert setup_logging("INFO", environ={}, stream=stream) == "stderr"
    logging.getLogger("device.test").info("mood %s", "happy", extra={"MOOD": "happy"})
    logging.getLogger("device.test").debug("per-frame noise")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO device\.test: mood happy", lines[0])


def test_setup_logging_twice_keeps_one_handler(restore_root_logger):
    stream = io.StringIO()
    setup_logging("INFO", environ={}, stream=stream)
    setup_logging("INFO", environ={}, stream=stream)
    logging.getLogger("device.test").warning("once")
    assert stream.getvalue().count("once") == 1


def test_journal_logging_under_systemd_sends_structured_fields(restore_root_logger):
    pytest.importorskip("systemd.journal", reason="systemd-python not installed (requirements/dev.txt)")
    sent = []

    def sender(MESSAGE, **fields):  # noqa: N803 - systemd.journal.send's signature
        sent.append({"MESSAGE": MESSAGE, **fields})

    mode = setup_logging("INFO", environ={"INVOCATION_ID": "0123abcd"}, stream=io.StringIO(),
                         journal_sender=sender)
    assert mode == "journal"
    logging.getLogger("device.app").info("mood %s", "happy", extra={"MOOD": "happy"})
    logging.getLogger("device.app").error("camera lost")
    assert [e["MESSAGE"] for e in sent] == ["mood happy", "camera lost"]
    assert [e["PRIORITY"] for e in sent] == ["6", "3"]
    assert sent[0]["MOOD"] == "happy"
    assert all(e["SYSLOG_IDENTIFIER"] == "moodbox" and e["LOGGER"] == "device.app" for e in sent)


def test_under_systemd_without_systemd_python_lines_carry_a_priority_prefix(restore_root_logger, monkeypatch):
    monkeypatch.setitem(sys.modules, "systemd", None)  # makes `import systemd.journal` fail
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    stream = io.StringIO()
    assert setup_logging("INFO", environ={"INVOCATION_ID": "x"}, stream=stream) == "journal-stream"
    logging.getLogger("device.app").error("camera lost")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "<4>device.systemd: systemd-python is not installed: logging to stderr without structured fields"
    assert lines[1] == "<3>device.app: camera lost"


def test_journal_stream_counts_only_when_it_is_our_stderr(tmp_path):
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert running_under_systemd({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not running_under_systemd({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not running_under_systemd({}, stream)
        assert running_under_systemd({"INVOCATION_ID": "abc"}, stream)


# -- the unit file ------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_the_required_settings():
    s = unit_settings(UNIT.read_text())
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"], "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["78"], "User": ["moodbox"], "StateDirectory": ["moodbox"],
        "ConfigurationDirectory": ["moodbox"], "ProtectSystem": ["strict"], "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""], "DevicePolicy": ["closed"], "PrivateTmp": ["yes"],
        "ExecStart": ["/opt/moodbox/bin/moodbox run --config /etc/moodbox/config.toml"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    assert s["SupplementaryGroups"] == ["video i2c gpio"]
    assert sorted(s["DeviceAllow"]) == ["char-dma_heap rw", "char-i2c rw", "char-media rw", "char-video4linux rw"]
    assert "@system-service" in s["SystemCallFilter"]


def test_every_allowance_in_the_unit_is_commented():
    lines = UNIT.read_text().splitlines()
    allowances = ("DeviceAllow=", "SupplementaryGroups=", "RestrictAddressFamilies=", "StateDirectory=",
                  "ConfigurationDirectory=")
    for number, line in enumerate(lines):
        if line.startswith(allowances):
            above = next(prev for prev in reversed(lines[:number]) if prev.strip())
            assert above.startswith("#"), f"line {number + 1} ({line}) has no comment saying why"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    return path


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def runnable_unit(tmp_path) -> Path:
    """The unit with ExecStart pointing at a program that exists here (verify checks it)."""
    text = UNIT.read_text().replace("/opt/moodbox/bin/moodbox", sys.executable)
    unit = tmp_path / "moodbox.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify_is_clean(runnable_unit):
    result = verify(runnable_unit)
    assert (result.returncode, result.stderr) == (0, "")


def test_systemd_analyze_verify_would_report_an_unknown_key(runnable_unit):
    # The check above is only meaningful if verify prints what it dislikes.
    runnable_unit.write_text(runnable_unit.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=30\n"))
    result = verify(runnable_unit)
    assert "WatchdogSecs" in result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run([systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    if match is None and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_security_exposure_is_at_most_3(runnable_unit):
    assert exposure(runnable_unit) <= MAX_EXPOSURE


def test_exposure_figure_reacts_to_hardening(runnable_unit):
    hardened = exposure(runnable_unit)
    lax = runnable_unit.read_text()
    for key in ("ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "DevicePolicy=closed"):
        lax = lax.replace(key, "#")
    runnable_unit.write_text(lax)
    assert exposure(runnable_unit) > hardened + 1
