"""The real daemon as a subprocess: cold start, then its CPU and memory at the default 5 fps.

``python -m device run`` starts on a config written for the run: the replay
camera looping over the benchmark's frames, the model under test, state in a
temporary folder, the display on luma's in-memory ``dummy`` device (drawing
costs what it costs on the box, minus I2C), Spotify off (no network here) and
MQTT on, to a private mosquitto on loopback.

- **Cold start:** ``READY=1`` arrives on a real AF_UNIX datagram socket
  (``$NOTIFY_SOCKET``), sent once the model is loaded and the camera open;
  the first mood is the log output's ``mood None -> ...`` line.
- **Cost:** from ``warmup_s`` after READY, for ``seconds``: CPU time from
  ``/proc/<pid>/stat`` (utime + stime, all threads), RSS from
  ``/proc/<pid>/status`` (VmRSS sampled; VmHWM is the kernel's own peak).
- **Frames processed:** the daemon's own counter, which it publishes on MQTT
  ``<base>/stats`` (``frames``, refreshed with every PipelineStats). Without
  mosquitto the count falls back to ``[pipeline] fps`` x seconds and says so.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.config import parse_config

__all__ = ["ProcSample", "measure", "read_proc", "write_config"]

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = os.environ.get("MOODBOX_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BOX_ID = "bench"
#: The log output's line for the first mood of a run (device/outputs/eventlog.py).
FIRST_MOOD = re.compile(r"mood None -> (\S+?),")
#: Variables that would make the daemon think systemd started it, or ping someone else's watchdog.
_SYSTEMD_ENV = ("INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID", "NOTIFY_SOCKET")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    at: float  # time.monotonic()
    cpu_s: float  # user + system CPU seconds of the whole process
    rss_kb: int
    peak_rss_kb: int  # VmHWM
    threads: int


def read_proc(pid: int) -> ProcSample:
    """One sample of a live process; raises OSError once it is gone."""
    at = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces or parentheses: count from the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()[0] if value.split() else ""
    return ProcSample(at, cpu, int(status.get("VmRSS", 0)), int(status.get("VmHWM", 0)), int(status.get("Threads", 0)))


def write_config(path: Path, *, frames: Path, model: Path, state: Path, mqtt_port: int | None) -> str:
    """The run's config.toml; everything not named here keeps its default (5 fps processing)."""
    mqtt = (f"enabled = true\nhost = \"127.0.0.1\"\nport = {mqtt_port}\nbox_id = \"{BOX_ID}\"\n"
            "stats_interval_s = 1.0\n") if mqtt_port else "enabled = false\n"
    text = (
        f"[camera]\nsource = \"replay\"\npath = {json.dumps(str(frames))}\nloop = true\n\n"
        f"[model]\npath = {json.dumps(str(model))}\n\n"
        f"[state]\ndir = {json.dumps(str(state))}\n\n"
        "[log]\nlevel = \"INFO\"\n\n"
        "[spotify]\nenabled = false\n\n"
        "[display]\ndriver = \"dummy\"\n\n"
        f"[mqtt]\n{mqtt}"
    )
    path.write_text(text)
    return text


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _mosquitto(folder: Path) -> Iterator[int]:
    """A private broker on a free loopback port; yields the port."""
    port = _free_port()
    conf = folder / "mosquitto.conf"
    # Running as root, mosquitto would switch to user "mosquitto" and lose access to the folder.
    conf.write_text(f"user {getpass.getuser()}\npersistence false\nlog_dest none\n"
                    f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on port {port}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _StatsListener:
    """Keeps (arrival time, frames) from the daemon's ``<base>/stats`` messages."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        from device.topics import STATS, topic

        self.points: list[tuple[float, int]] = []
        self._topic = topic(f"moodbox/{BOX_ID}", STATS)
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="moodbox-bench-listener")
        self._client.on_connect = lambda client, *_: client.subscribe(self._topic)
        self._client.on_message = self._record
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _record(self, client, userdata, message) -> None:
        try:
            frames = json.loads(message.payload).get("frames")
        except (ValueError, AttributeError):
            return
        if isinstance(frames, int):
            self.points.append((time.monotonic(), frames))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class _Watch:
    """What the reader threads saw, with monotonic arrival times."""

    ready_at: float | None = None
    first_mood: tuple[float, str] | None = None
    log: list[str] = field(default_factory=list)
    samples: list[ProcSample] = field(default_factory=list)
    ready_event: threading.Event = field(default_factory=threading.Event)


def _read_notify(sock: socket.socket, watch: _Watch, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            message = sock.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        except OSError:
            return
        if "READY=1" in message.splitlines() and watch.ready_at is None:
            watch.ready_at = time.monotonic()
            watch.ready_event.set()


def _read_log(stream, watch: _Watch) -> None:
    for line in stream:
        at = time.monotonic()
        watch.log.append(line.rstrip("\n"))
        if watch.first_mood is None:
            match = FIRST_MOOD.search(line)
            if match:
                watch.first_mood = (at, match.group(1))


def _sample(pid: int, watch: _Watch, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            watch.samples.append(read_proc(pid))
        except (OSError, ValueError, IndexError):
            return


def _frames_processed(points: list[tuple[float, int]], start: float, end: float) -> tuple[float, str] | None:
    """Processed frames/s from the daemon's own counter over [start, end], or None with too few updates.

    The counter in the stats moves only when the loop publishes PipelineStats
    (every ``[pipeline] stats_interval_s``), so the first message carrying a
    new value marks when that value was current.
    """
    fresh, last = [], None
    for at, frames in points:
        if frames != last:
            fresh.append((at, frames))
            last = frames
    inside = [(at, frames) for at, frames in fresh if start <= at <= end]
    if len(inside) < 2:
        return None
    (t0, f0), (t1, f1) = inside[0], inside[-1]
    return (f1 - f0) / (t1 - t0), f"daemon's own frame counter (MQTT stats), {f1 - f0} frames over {t1 - t0:.1f} s"


def measure(model: Path, frames: Path, workdir: Path, *, seconds: float = 60.0, warmup_s: float = 5.0,
            python: str | None = None, use_broker: bool = True, ready_timeout_s: float = 60.0,
            sample_every_s: float = 0.25) -> dict[str, Any]:
    """Start the daemon, wait for READY, measure a window, stop it with SIGTERM; all figures in one dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    have_broker = use_broker and Path(MOSQUITTO).exists()
    with ExitStack() as stack:
        port = stack.enter_context(_mosquitto(workdir)) if have_broker else None
        listener = _StatsListener(port) if port else None
        if listener is not None:
            stack.callback(listener.close)
        config_path = workdir / "config.toml"
        config_text = write_config(config_path, frames=frames, model=model.resolve(), state=workdir / "state",
                                   mqtt_port=port)
        parsed = parse_config(config_text, str(config_path), workdir)
        pipeline_fps = parsed.pipeline.fps
        decode_ms = _decode_ms(frames)
        notify_path = workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stack.callback(sock.close)
        sock.bind(str(notify_path))
        sock.settimeout(0.2)
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        env["NOTIFY_SOCKET"] = str(notify_path)
        watch, stop = _Watch(), threading.Event()
        stack.callback(stop.set)
        started = time.monotonic()
        process = subprocess.Popen([python or sys.executable, "-m", "device", "run", "--config", str(config_path)],
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stack.callback(_ensure_dead, process)
        threads = [threading.Thread(target=_read_notify, args=(sock, watch, stop), daemon=True),
                   threading.Thread(target=_read_log, args=(process.stdout, watch), daemon=True),
                   threading.Thread(target=_sample, args=(process.pid, watch, stop, sample_every_s), daemon=True)]
        for thread in threads:
            thread.start()

        result: dict[str, Any] = {"config": config_text, "mqtt": bool(port)}
        while not watch.ready_event.wait(0.1):
            if process.poll() is not None or time.monotonic() - started > ready_timeout_s:
                break
        if watch.ready_at is None:
            code = process.poll()
            why = f"exited with {code}" if code is not None else f"no READY=1 within {ready_timeout_s:g} s"
            return {**result, "status": "failed", "reason": why, "log_tail": watch.log[-30:]}
        at_ready = read_proc(process.pid)

        window_start = watch.ready_at + warmup_s
        try:
            process.wait(max(0.0, window_start - time.monotonic()))
            first = None
        except subprocess.TimeoutExpired:
            first = read_proc(process.pid)
            try:
                process.wait(seconds)
            except subprocess.TimeoutExpired:
                pass
        if first is None or process.poll() is not None:
            threads[1].join(2)
            return {**result, "status": "failed", "reason": f"the daemon exited with {process.returncode} "
                    f"{time.monotonic() - watch.ready_at:.1f} s after READY", "log_tail": watch.log[-30:]}
        last = read_proc(process.pid)

        stop_started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(10)
            stop_s: float | None = time.monotonic() - stop_started
        except subprocess.TimeoutExpired:
            code, stop_s = None, None
        threads[1].join(2)  # the log reader, to its end

        window = [s for s in watch.samples if first.at <= s.at <= last.at] or [first, last]
        wall = last.at - first.at
        cpu = last.cpu_s - first.cpu_s
        observed = _frames_processed(listener.points, first.at, last.at) if listener else None
        if observed is not None:
            fps, how = observed
        else:
            fps = pipeline_fps
            how = ("nominal: [pipeline] fps x seconds (" +
                   ("too few stats updates in the window" if listener else "no mosquitto, so no frame counter") + ")")
        frames_done = fps * wall
        rss = np.array([s.rss_kb for s in window], dtype=np.float64) / 1024
        mood = watch.first_mood
        result.update({
            "status": "ok",
            "cold_start": {
                "ready_s": round(watch.ready_at - started, 3),
                "cpu_s_to_ready": round(at_ready.cpu_s, 3),
                "rss_mb_at_ready": round(at_ready.rss_kb / 1024, 1),
                "first_mood_s": round(mood[0] - started, 3) if mood else None,
                "first_mood": mood[1] if mood else None,
                "first_mood_note": "" if mood else f"no mood within {last.at - started:.0f} s of the start",
            },
            "window_s": round(wall, 2),
            "warmup_s": warmup_s,
            "cpu_s": round(cpu, 3),
            "cpu_pct_one_core": round(100 * cpu / wall, 2),
            "pipeline_fps": pipeline_fps,
            "frames_per_s": round(fps, 3),
            "frames": round(frames_done, 1),
            "frames_method": how,
            "cpu_ms_per_frame": round(1000 * cpu / frames_done, 3) if frames_done else None,
            "rss_mb_steady": round(float(np.median(rss)), 1),
            "rss_mb_max_sampled": round(float(rss.max()), 1),
            "rss_mb_peak": round(max(s.peak_rss_kb for s in [*watch.samples, last]) / 1024, 1),
            "threads": last.threads,
            # The replay camera decodes a JPEG per captured frame; a Pi camera delivers raw Y planes.
            "replay_decode_ms": round(decode_ms, 2),
            "replay_decode_pct_one_core": round(decode_ms * parsed.camera.fps / 10, 2),
            "stop_s": round(stop_s, 3) if stop_s is not None else None,
            "exit_code": code,
            "warnings": [line for line in watch.log if " WARNING " in line or " ERROR " in line][-20:],
        })
        return result


def _decode_ms(frames: Path) -> float:
    """Median time to read one replay frame as the replay camera does (cv2.imread)."""
    import cv2

    files = sorted(frames.glob("*.jpg"))[:10]
    times = []
    for path in files:
        start = time.perf_counter()
        cv2.imread(str(path), cv2.IMREAD_COLOR)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)) if times else 0.0


def _ensure_dead(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
