"""The real daemon as a subprocess on real stand-ins, for the soak and fault suites.

``Stack`` is what a module shares: a mosquitto broker (``tests/broker.py``)
and a fake Spotify Web API (``tests/fake_spotify.py``) holding the
``moodbox`` Connect device and the playlists of ``test_music_engine``.
``write_config`` writes a full config for one daemon: replay camera, the
shipped model, state in a folder of the test's own, MQTT to the broker,
Spotify to the fake, the display on luma's in-memory ``dummy`` device.
``Daemon`` runs ``python -m device run`` on it, as systemd would: a real
``$NOTIFY_SOCKET`` (READY, WATCHDOG, STOPPING are recorded), the log read
line by line, /proc sampled on request. ``Box`` reads what the daemon says
over MQTT and sends it commands.

Nothing here sleeps for a fixed time: every wait is for a condition.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import Broker, Message, Observer, wait_for
from fake_spotify import CLIENT_ID, CLIENT_SECRET, FakeSpotify
from test_music_engine import PLAYLISTS

from device.demo_input import write_demo_frames
from device.topics import (
    AVAILABILITY,
    EVENTS,
    RESPONSE,
    STATE,
    STATS,
    command_topic,
    topic,
)

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "emotion_int8.tflite"

# bench/ is a tool of the checkout, not part of the installed package: the /proc sampler lives there.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.daemon_cost import _SYSTEMD_ENV, read_proc

__all__ = ["MODEL", "Box", "Daemon", "Run", "Sample", "Stack", "history_rows", "sample", "write_config"]

#: Generous: only a hang reaches it (a cold start on a busy 2-core machine takes a few seconds).
READY_TIMEOUT_S = 90.0


# --- what a module shares -----------------------------------------------------


class Stack:
    """One broker and one fake Spotify (device ``moodbox``, every test playlist) on loopback."""

    def __init__(self, folder: Path, track_s: float = 180.0) -> None:
        self.broker = Broker(folder / "broker").start()
        self.spotify = FakeSpotify().start()
        self.spotify.add_device("moodbox")
        for playlist in PLAYLISTS:
            self.spotify.add_playlist(playlist.uri, tracks=20, duration_ms=int(track_s * 1000), name=playlist.name)

    def reset(self) -> None:
        """Between tests: no faults left over, the broker up."""
        self.spotify.clear_faults()
        if self.broker.process is None:
            self.broker.start()

    def close(self) -> None:
        self.spotify.stop()
        self.broker.stop()


def _toml(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML.
    return json.dumps(value)


def write_config(path: Path, stack: Stack, *, frames: Path, state: Path, box_id: str, model: Path = MODEL,
                 overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """A full config for one daemon; ``overrides`` replaces keys per section, e.g. {"pipeline": {"fps": 10}}."""
    sections: dict[str, dict[str, Any]] = {
        "camera": {"source": "replay", "path": str(frames), "fps": 10.0, "loop": True, "read_timeout_s": 0.5,
                   "reopen_max_s": 1.0},
        "model": {"path": str(model)},
        "pipeline": {"fps": 5.0, "stats_interval_s": 1.0},
        "mood": {"smoothing_s": 0.5, "min_dwell_s": 1.0, "no_face_s": 2.0},
        "state": {"dir": str(state)},
        "log": {"level": "INFO"},
        "mqtt": {"enabled": True, "host": stack.broker.host, "port": stack.broker.port, "box_id": box_id,
                 "stats_interval_s": 1.0, "reconnect_min_s": 1, "reconnect_max_s": 2},
        "spotify": {"enabled": True, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "device_name": "moodbox", "api_base": f"{stack.spotify.url}/v1/",
                    "accounts_base": stack.spotify.url, "timeout_s": 1.0, "backoff_max_s": 2.0},
        "music": {"policy": "uplift", "min_change_s": 0.0, "poll_s": 2.0, "idle_poll_s": 5.0,
                  "no_face_pause_s": 2.0},
        "display": {"driver": "dummy"},
    }
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    for playlist in PLAYLISTS:
        lines += ["[[music.playlists]]", f"uri = {_toml(playlist.uri)}", f"name = {_toml(playlist.name)}",
                  f"moods = {_toml(list(playlist.moods))}", f"valence = {playlist.valence}",
                  f"arousal = {playlist.arousal}", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


# --- /proc --------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu_s: float  # user + system CPU seconds of the whole process so far
    rss_kb: int
    threads: int
    fds: int  # entries in /proc/<pid>/fd: files, sockets, pipes


def sample(pid: int) -> Sample:
    """One sample of a live process (bench.daemon_cost.read_proc, plus its open file count)."""
    proc = read_proc(pid)
    return Sample(proc.at, proc.cpu_s, proc.rss_kb, proc.threads, len(os.listdir(f"/proc/{pid}/fd")))


# --- the daemon -----------------------------------------------------------------


class Daemon:
    """``python -m device run --config <config>`` with a real NOTIFY_SOCKET and a 1 s watchdog."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.notices: list[tuple[float, str]] = []  # (monotonic arrival, "READY=1" ...)
        self.log: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle --

    def start(self) -> Daemon:
        notify = self.workdir / f"notify-{uuid.uuid4().hex[:8]}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(notify))
        self._sock.settimeout(0.2)
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env.update(NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1", **self.extra_env)
        self.process = subprocess.Popen([sys.executable, "-m", "device", "run", "--config", str(self.config)],
                                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._read_notify, args=(self._sock,), daemon=True),
                         threading.Thread(target=self._read_log, args=(self.process.stdout,), daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> Daemon:
        self.wait(lambda: self.notice("READY=1") or self.process.poll() is not None, timeout, "READY=1")
        if not self.notice("READY=1"):
            raise AssertionError(f"the daemon exited with {self.process.returncode} before READY:\n{self.tail()}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM; returns the exit code (None if it did not exit) and how long it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would: no shutdown code runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        """Make sure the process is gone and the readers have stopped."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self._sock is not None:
            self._sock.close()

    # -- what it says --

    def _read_notify(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            with self._cond:
                self.notices += [(at, line) for line in data.decode(errors="replace").splitlines()]
                self._cond.notify_all()

    def _read_log(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.log.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Until ``predicate()`` is truthy (re-checked on every notice or log line, and every 0.2 s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; log tail:\n{self.tail()}")
                self._cond.wait(min(left, 0.2))

    def notice(self, text: str, after: float = 0.0) -> bool:
        with self._cond:
            return any(line == text and at >= after for at, line in self.notices)

    def count_notices(self, text: str, start: float = 0.0, end: float = float("inf")) -> int:
        with self._cond:
            return sum(1 for at, line in self.notices if line == text and start <= at <= end)

    def mark(self) -> int:
        """An index into the log: pass it as ``after`` to look only at lines from now on."""
        with self._cond:
            return len(self.log)

    def lines(self, text: str, after: int = 0) -> list[str]:
        with self._cond:
            return [line for line in self.log[after:] if text in line]

    def wait_log(self, text: str, after: int = 0, timeout: float = 30.0) -> str:
        return self.wait(lambda: next(iter(self.lines(text, after)), None), timeout, f"a log line with {text!r}")

    def tail(self, lines: int = 40) -> str:
        with self._cond:
            return "\n".join(self.log[-lines:])

    def sample(self) -> Sample:
        return sample(self.pid)


# --- MQTT -----------------------------------------------------------------------


class _TimedObserver(Observer):
    """An Observer that also keeps each message's arrival time (for rates from the frame counter)."""

    def __init__(self, broker: Broker, topics: tuple[str, ...]) -> None:
        self.arrivals: list[float] = []
        super().__init__(broker, topics)

    def _record(self, client, userdata, message) -> None:
        with self._cond:  # re-entrant: the base class takes it again
            self.arrivals.append(time.monotonic())
            super()._record(client, userdata, message)

    def timed(self, topic_name: str) -> list[tuple[float, Message]]:
        with self._cond:
            return [(at, m) for at, m in zip(self.arrivals, self.messages) if m.topic == topic_name]


class Box:
    """The daemon as Home Assistant sees it: an MQTT observer on ``moodbox/<box_id>/#``."""

    def __init__(self, broker: Broker, box_id: str) -> None:
        self.base = f"moodbox/{box_id}"
        self.observer = _TimedObserver(broker, (f"{self.base}/#",))
        self.state_topic = topic(self.base, STATE)
        self.events_topic = topic(self.base, EVENTS)
        self.stats_topic = topic(self.base, STATS)
        self.response_topic = topic(self.base, RESPONSE)
        self.availability_topic = topic(self.base, AVAILABILITY)

    def close(self) -> None:
        self.observer.close()

    def mark(self) -> int:
        return self.observer.mark()

    def state(self, predicate: Callable[[dict], bool] = lambda s: True, after: int = 0,
              timeout: float = 30.0) -> dict:
        return self.observer.wait(self.state_topic, lambda m: predicate(m.json()), after, timeout).json()

    def event(self, predicate: Callable[[dict], bool], after: int = 0, timeout: float = 30.0) -> dict:
        return self.observer.wait(self.events_topic, lambda m: predicate(m.json()), after, timeout).json()

    def events(self, after: int = 0) -> list[dict]:
        return [m.json() for m in self.observer.on(self.events_topic, after)]

    def availability(self, value: str, after: int = 0, timeout: float = 30.0) -> Message:
        return self.observer.wait(self.availability_topic, lambda m: m.text == value, after, timeout)

    def latest_state(self, timeout: float = 30.0) -> dict:
        """The newest retained state the daemon has published."""
        wait_for(lambda: self.observer.on(self.state_topic), timeout, what="a state message")
        return self.observer.on(self.state_topic)[-1].json()

    def stat(self, key: str = "frames") -> int | None:
        """A counter from the daemon's latest ``stats`` message: ``frames`` processed, ``faces`` classified."""
        for message in reversed(self.observer.on(self.stats_topic)):
            value = message.json().get(key)
            if isinstance(value, int):
                return value
        return None

    def stat_at_least(self, count: int, key: str = "frames", timeout: float = 30.0) -> int:
        return wait_for(lambda: (self.stat(key) or 0) >= count and self.stat(key), timeout,
                        what=f"the {key} counter to reach {count}")

    def advance(self, count: int = 3, key: str = "frames", timeout: float = 30.0) -> int:
        """Wait until a stats counter has moved ``count`` past its current value (the loop is alive)."""
        start = self.stat_at_least(1, key, timeout)
        return self.stat_at_least(start + count, key, timeout)

    def frame_rate(self, seconds: float) -> float:
        """Frames per second processed over the next ``seconds``, by the daemon's own counter.

        Only stats messages that carry a new count are used: each marks when that
        count was current (the counter moves once per ``[pipeline] stats_interval_s``).
        """
        first = wait_for(self._fresh_count, 30.0, what="a stats message with a frame count")
        wait_for(lambda: self._fresh_count()[0] >= first[0] + seconds, seconds + 30.0, what="stats messages")
        last = self._fresh_count()
        return (last[1] - first[1]) / (last[0] - first[0])

    def _fresh_count(self) -> tuple[float, int] | None:
        """(arrival, frames) of the newest stats message whose count differs from the one before it."""
        counts = [(at, m.json().get("frames")) for at, m in self.observer.timed(self.stats_topic)]
        counts = [(at, frames) for at, frames in counts if isinstance(frames, int)]
        for index in range(len(counts) - 1, -1, -1):
            if index == 0 or counts[index][1] != counts[index - 1][1]:
                return counts[index]
        return None

    def command(self, name: str, value: Any = None, timeout: float = 30.0) -> dict:
        """Send ``<base>/set/<name>`` as JSON with a transaction; the daemon's response."""
        transaction = uuid.uuid4().hex[:12]
        after = self.mark()
        self.observer.publish(command_topic(self.base, name), json.dumps({"value": value,
                                                                          "transaction": transaction}))
        return self.observer.wait(self.response_topic, lambda m: m.json().get("transaction") == transaction,
                                  after, timeout).json()


# --- one test's daemon -----------------------------------------------------------


class Run:
    """One daemon's files (frames, state, config), its MQTT view, and its processes, on a shared Stack.

    Each Run has its own box id, so retained messages of one never meet another's.
    """

    def __init__(self, stack: Stack, workdir: Path, *, face_frames: int = 20, empty_frames: int = 0,
                 state: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.stack = stack
        self.workdir = workdir
        self.box_id = f"t{uuid.uuid4().hex[:8]}"
        # The demo's moving portrait (then an empty room), as a replay folder.
        self.frames = write_demo_frames(workdir / "frames", face_frames, empty_frames)
        self.state = state or workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        stack.spotify.login(self.state)
        self.config = workdir / "config.toml"
        self.overrides = overrides or {}
        self.write_config()
        self.box = Box(stack.broker, self.box_id)
        self.daemons: list[Daemon] = []

    def write_config(self, model: Path = MODEL) -> str:
        return write_config(self.config, self.stack, frames=self.frames, state=self.state, box_id=self.box_id,
                            model=model, overrides=self.overrides)

    def start(self, env: dict[str, str] | None = None, ready: bool = True) -> Daemon:
        daemon = Daemon(self.config, self.workdir, env).start()
        self.daemons.append(daemon)
        return daemon.wait_ready() if ready else daemon

    @property
    def daemon(self) -> Daemon:
        return self.daemons[-1]

    def reconnect(self) -> Box:
        """A new MQTT view (after the broker restarted: the old one's subscriptions are gone)."""
        self.box.close()
        self.box = Box(self.stack.broker, self.box_id)
        return self.box

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        self.box.close()


# --- the history database ----------------------------------------------------------


def history_rows(state: Path, table: str = "moods") -> list[tuple]:
    """Every committed row of a history table, read-only, as another process would see them."""
    path = state / "history.sqlite"
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
