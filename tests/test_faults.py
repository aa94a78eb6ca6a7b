"""Fault injection on the real daemon (issue 7).

Every case starts its own ``python -m device run`` (replay camera, the shipped
model, real mosquitto, the fake Spotify that the real spotipy talks to; see
``daemon_harness.py``), injects one fault, and checks three things:

1. the daemon is alive afterwards, or exited with its documented code;
2. it said what happened: the MQTT ``state``/``events`` topics or its log;
3. nothing committed is lost: the history rows written before the fault are
   all still there, byte for byte, afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from broker import Observer, wait_for
from daemon_harness import MODEL, Run, Stack, history_rows

from device.config import EX_CONFIG, MoodConfig
from device.events import FaceReading
from device.mood import Stabiliser
from device.music.history import History
from device.preprocess import EMOTIONS

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="models/emotion_int8.tflite has not been shipped yet")

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    shared = Stack(tmp_path_factory.mktemp("stack"))
    yield shared
    shared.close()


@pytest.fixture
def runs(stack, tmp_path):
    """``runs(**kwargs)`` makes a Run (see daemon_harness.Run); all are stopped at the end of the test."""
    stack.reset()
    made: list[Run] = []

    def make(**kwargs) -> Run:
        run = Run(stack, tmp_path / f"run{len(made)}", **kwargs)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


def committed(run: Run) -> dict[str, list[tuple]]:
    """Every row of the history's tables that another process can read now."""
    return {table: history_rows(run.state, table) for table in ("moods", "tracks")}


def settled(run: Run) -> dict[str, list[tuple]]:
    """Wait for the first mood and the music it started; returns the history committed so far."""
    run.box.event(lambda e: e["event"] == "mood_changed")
    run.box.event(lambda e: e["event"] == "track_started")
    wait_for(lambda: history_rows(run.state), what="the first history row")
    return committed(run)


def assert_kept(run: Run, before: dict[str, list[tuple]]) -> None:
    after = committed(run)
    for table, rows in before.items():
        assert after[table][: len(rows)] == rows, f"{table} rows changed or vanished:\n{rows}\n{after[table]}"


def has_mood_row(run: Run, mood: str) -> bool:
    return any(row[2] == mood for row in history_rows(run.state))


# --- the camera --------------------------------------------------------------------


def test_camera_disappears_and_comes_back(runs):
    run = runs()
    daemon = run.start()
    before = settled(run)

    mark = run.box.mark()
    away = run.frames.with_name("away")
    run.frames.rename(away)
    lost = run.box.state(lambda s: s["camera_state"] == "camera_lost" and s["last_error"] is not None, after=mark)
    assert lost["last_error"]["source"] == "camera" and "camera lost" in lost["last_error"]["text"], lost
    daemon.wait_log("camera camera_lost")
    assert daemon.alive

    frames = run.box.stat()
    mark = run.box.mark()
    away.rename(run.frames)
    run.box.state(lambda s: s["camera_state"] == "ok", after=mark)
    run.box.stat_at_least(frames + 5)
    assert daemon.alive
    assert_kept(run, before)


# --- the broker ----------------------------------------------------------------------


def test_broker_killed_and_restarted(runs, stack):
    run = runs()
    daemon = run.start()
    before = settled(run)
    run.box.availability("online")
    frames = run.box.stat_at_least(1)

    mark = daemon.mark()
    os.kill(stack.broker.pid, signal.SIGKILL)
    stack.broker.stop()  # reaps it
    daemon.wait_log("mqtt unreachable", after=mark)
    # The loop goes on without a broker: the watchdog pings only after newly processed frames.
    killed = time.monotonic()
    daemon.wait(lambda: daemon.count_notices("WATCHDOG=1", start=killed) >= 3, 30, "watchdog pings with no broker")

    stack.broker.start()  # same port, and no retained messages: persistence is off
    daemon.wait_log("mqtt ok", after=mark)
    box = run.reconnect()
    assert box.availability("online").text == "online"
    state = box.state(lambda s: s["mood"] is not None)
    assert state["camera_state"] == "ok" and state["model"]
    assert box.stat_at_least(frames + 1) > frames
    assert box.command("volume", 35)["status"] == "ok"
    assert daemon.alive
    assert_kept(run, before)


# --- Spotify -----------------------------------------------------------------------------

SPOTIFY_FAULTS = {
    # (Fault arguments for every Web API path, the health the box must report)
    "429-storm": ({"status": 429, "retry_after": 2}, "rate_limited"),
    "5xx": ({"status": 503}, "unreachable"),
    "timeouts": ({"delay_s": 2.5}, "unreachable"),  # [spotify] timeout_s is 1 s here
}


@pytest.mark.parametrize("fault", SPOTIFY_FAULTS)
def test_spotify_faults(runs, stack, fault):
    kwargs, health = SPOTIFY_FAULTS[fault]
    run = runs()
    daemon = run.start()
    before = settled(run)
    healthy_fps = run.box.frame_rate(3.0)

    mark, log_mark = run.box.mark(), daemon.mark()
    started = time.monotonic()
    stack.spotify.fail("/v1/*", times=None, **kwargs)
    answer = run.box.command("next")
    assert answer["status"] == "error" and health.replace("_", " ") in answer["error"], answer
    event = run.box.event(lambda e: e["event"] == "error" and e["source"] == "spotify", after=mark)
    assert health in event["error"]
    run.box.state(lambda s: (s["last_error"] or {}).get("source") == "spotify" and health in s["last_error"]["text"],
                  after=mark)
    # The camera loop never waits on Spotify: its own frame counter keeps its pace.
    faulty_fps = run.box.frame_rate(4.0)
    assert faulty_fps >= 0.5 * healthy_fps, (healthy_fps, faulty_fps)
    if "retry_after" in kwargs:  # Retry-After is obeyed: no hammering while rate limited
        window = time.monotonic() - started
        calls = [r for r in stack.spotify.calls(path="/v1/*") if r.at >= started]
        assert len(calls) <= window / kwargs["retry_after"] + 3, [(r.path, round(r.at - started, 1)) for r in calls]

    stack.spotify.clear_faults()
    daemon.wait_log("spotify ok", after=log_mark)
    assert run.box.command("volume", 45)["status"] == "ok"
    assert daemon.alive
    assert_kept(run, before)


# --- the model ------------------------------------------------------------------------------


def test_model_corrupted_at_reload(runs):
    run = runs()
    model = run.workdir / "models" / MODEL.name
    meta = model.with_suffix(".json")
    model.parent.mkdir()
    shutil.copy(MODEL, model)
    shutil.copy(MODEL.with_suffix(".json"), meta)
    run.write_config(model=model)
    daemon = run.start()
    before = settled(run)
    loaded = run.box.state(lambda s: s["model"] is not None)["model"]
    good, good_meta = model.read_bytes(), meta.read_text()

    mark = run.box.mark()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    model.write_bytes(bytes(flipped))
    answer = run.box.command("reload_model")
    assert answer["status"] == "error" and "sha256 mismatch" in answer["error"], answer

    # A half file whose metadata was rewritten to match: the checksum passes, the runtime must refuse it.
    half = good[: len(good) // 2]
    model.write_bytes(half)
    matching = json.loads(good_meta) | {"sha256": hashlib.sha256(half).hexdigest(), "size_bytes": len(half)}
    meta.write_text(json.dumps(matching))
    answer = run.box.command("reload_model")
    assert answer["status"] == "error" and "cannot load it" in answer["error"], answer
    refused = run.box.event(lambda e: e["event"] == "error" and e["source"] == "model", after=mark)
    assert "still using the previous model" in refused["error"]

    run.box.advance(5, "faces")  # the old model goes on classifying
    assert run.box.latest_state()["model"] == loaded
    assert daemon.alive

    model.write_bytes(good)
    meta.write_text(good_meta)
    assert run.box.command("reload_model")["status"] == "ok"
    assert_kept(run, before)


# --- the config ------------------------------------------------------------------------------

CONFIG_ERRORS = {
    "typo": ("[pipeline]\nfsp = 5.0\n", ["unknown key 'pipeline.fsp' (line 5); did you mean 'fps'?"]),
    "out-of-range": ("[pipeline]\nfps = 0\n", ["'pipeline.fps' (line 5) = 0: Input should be greater than 0"]),
    "not-toml": ("[pipeline\nfps = 5\n", ["not valid TOML"]),
    "missing-model": ('[model]\npath = "no-such-model.tflite"\n', ["model refused", "no-such-model.tflite"]),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_errors_exit_78(runs, case):
    text, messages = CONFIG_ERRORS[case]
    run = runs()
    history = run.state / "history.sqlite"
    with closing(sqlite3.connect(history)) as db:  # a history from an earlier life of the box
        db.execute("CREATE TABLE moods (id INTEGER PRIMARY KEY, mood TEXT)")
        db.execute("INSERT INTO moods (mood) VALUES ('happy')")
        db.commit()
    kept = history.read_bytes()
    run.config.write_text(f'[state]\ndir = "{run.state}"\n\n{text}')

    daemon = run.start(ready=False)
    code = daemon.process.wait(60)
    daemon.close()
    output = "\n".join(daemon.log)
    assert code == EX_CONFIG, output
    for message in messages:
        assert message in output
    assert not daemon.notice("READY=1")
    assert history.read_bytes() == kept


# --- the history database ------------------------------------------------------------------------


def test_history_locked_by_another_connection(runs):
    run = runs()
    daemon = run.start()
    before = settled(run)
    path = run.state / "history.sqlite"

    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as other:
        # Shorter than the writer's 5 s busy timeout: the write waits for the lock and nothing is lost.
        mark = daemon.mark()
        other.execute("BEGIN EXCLUSIVE")
        assert run.box.command("mood", "sad 30")["status"] == "ok"
        time.sleep(2.0)  # the fault itself: how long the other connection holds its lock
        other.execute("COMMIT")
        wait_for(lambda: has_mood_row(run, "sad"), what="the sad row, written once the lock was released")
        assert not daemon.lines("history write failed", after=mark)

        # Longer than the busy timeout: that one row is dropped, the daemon says so and goes on.
        other.execute("BEGIN EXCLUSIVE")
        assert run.box.command("mood", "angry 30")["status"] == "ok"
        assert "database is locked" in daemon.wait_log("history write failed", after=mark)
        run.box.advance()  # the camera loop never waited
        other.execute("COMMIT")

    assert run.box.command("mood", "fear 30")["status"] == "ok"
    wait_for(lambda: has_mood_row(run, "fear"), what="a row written after the lock was gone")
    assert daemon.alive
    assert_kept(run, before)


def test_history_truncated_while_stopped(runs):
    """A power cut that leaves the file short: the next start sets it aside and starts a fresh history."""
    run = runs()
    daemon = run.start()
    settled(run)
    code, _ = daemon.terminate()
    assert code == 0
    path = run.state / "history.sqlite"
    damaged = path.read_bytes()[:4096 + 100]  # the header page survives, the tables' pages do not
    path.write_bytes(damaged)

    daemon = run.start()
    line = daemon.wait_log("unreadable")
    assert "moved to history.sqlite.corrupt-" in line and "starting a new one" in line
    (aside,) = wait_for(lambda: list(run.state.glob("history.sqlite.corrupt-*")), what="the damaged file set aside")
    assert aside.read_bytes() == damaged  # kept for a person to recover, not deleted
    assert run.box.command("mood", "sad 30")["status"] == "ok"
    wait_for(lambda: has_mood_row(run, "sad"), what="a row in the new history")
    assert daemon.alive


def test_history_truncated_while_running(runs):
    """Someone cuts the live file short: the daemon goes on, and its next start does not build on the damage."""
    run = runs()
    with closing(History(run.state / "history.sqlite")) as months:  # a history of many pages
        for i in range(3000):
            months.add_mood(1.7e9 + i, ("happy", "sad")[i % 2], None, 0.8, False)
    daemon = run.start()
    settled(run)
    path = run.state / "history.sqlite"
    os.truncate(path, path.stat().st_size // 2)
    assert run.box.command("mood", "sad 30")["status"] == "ok"
    assert run.box.command("mood", "fear 30")["status"] == "ok"
    run.box.advance()
    assert daemon.alive
    code, _ = daemon.terminate()
    assert code == 0

    daemon = run.start()
    mark = daemon.mark()
    assert run.box.command("mood", "angry 30")["status"] == "ok"
    wait_for(lambda: has_mood_row(run, "angry"), what="a row written after the restart")
    assert not daemon.lines("history write failed", after=mark), daemon.tail()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# --- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs for the state dir (needs root, or CAP_SYS_ADMIN)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk says ENOSPC; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        chunk = b"\0" * 65536
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError:
            pass
    with pytest.raises(OSError), filler.open("ab") as out:  # really full: not even one more byte
        out.write(b"\0" * 4096)
        out.flush()
    return filler


def test_state_disk_full(runs, stack, small_disk):
    run = runs(state=small_disk / "state")
    daemon = run.start()
    before = settled(run)
    mark, log_mark = run.box.mark(), daemon.mark()
    filler = fill(small_disk)

    # History: the row is lost (there is no room for it), the mood still goes out.
    assert run.box.command("mood", "sad 30")["status"] == "ok"
    run.box.event(lambda e: e["event"] == "mood_changed" and e["mood"] == "sad", after=mark)
    assert "full" in daemon.wait_log("history write failed", after=log_mark)
    # Spotify: a refreshed token that cannot be saved is still used.
    stack.spotify.expire_access_tokens()
    answer = run.box.command("volume", 30)
    assert answer["status"] == "ok", (answer, daemon.tail())
    assert "No space left" in daemon.wait_log("cannot save the Spotify token", after=log_mark)
    assert not daemon.lines("Traceback", after=log_mark), daemon.tail()
    run.box.advance()
    assert daemon.alive

    filler.unlink()
    assert run.box.command("mood", "fear 30")["status"] == "ok"
    wait_for(lambda: has_mood_row(run, "fear"), what="a row written once there was room again")
    assert_kept(run, before)


# --- kill -9 -----------------------------------------------------------------------------------------


def test_kill_9_while_writing_history_then_restart(runs, stack):
    run = runs()
    daemon = run.start()
    settled(run)
    stop = threading.Event()

    def flood() -> None:  # mood overrides as fast as MQTT takes them: one history row each
        with Observer(stack.broker, ()) as sender:
            moods = ("sad", "angry")
            for i in range(100_000):
                if stop.is_set():
                    return
                sender.publish(f"{run.box.base}/set/mood", f"{moods[i % 2]} 30", wait=False)
                stop.wait(0.02)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        wait_for(lambda: len(history_rows(run.state)) >= 30, what="30 history rows")
        before = committed(run)
        mark = run.box.mark()
        daemon.kill()
    finally:
        stop.set()
        flooder.join(10)
    # The broker sends the Last Will for a box that vanished.
    run.box.availability("offline", after=mark)
    assert_kept(run, before)

    daemon = run.start()
    run.box.availability("online", after=mark)
    assert run.box.command("mood", "fear 30")["status"] == "ok"
    wait_for(lambda: has_mood_row(run, "fear"), what="a row written after the restart")
    assert not daemon.lines("unreadable") and not daemon.lines("history write failed"), daemon.tail()
    assert_kept(run, before)
    with closing(sqlite3.connect(run.state / "history.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# --- the clock -----------------------------------------------------------------------------------------

#: An LD_PRELOAD shim that shifts CLOCK_REALTIME (what time.time() and datetime.now() read) by the number
#: of seconds in $WALLJUMP_FILE, re-read every 20 ms, and leaves CLOCK_MONOTONIC alone: an NTP step, as
#: a Pi without a real-time clock sees at every boot. (libfaketime 0.9.10, Debian 12's, cannot do this
#: for Python 3.11: with monotonic time excluded, time.sleep fails with EINVAL, libfaketime issue 426.)
WALLJUMP_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long offset_ns, checked_ns = -1;

static long long offset(void) {
    struct timespec now;
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    long long mono = now.tv_sec * 1000000000LL + now.tv_nsec;
    if (checked_ns < 0 || mono - checked_ns > 20000000LL) {
        const char *path = getenv("WALLJUMP_FILE");
        FILE *f = path ? fopen(path, "r") : NULL;
        long long seconds;
        if (f) {
            if (fscanf(f, "%lld", &seconds) == 1) offset_ns = seconds * 1000000000LL;
            fclose(f);
        }
        checked_ns = mono;
    }
    return offset_ns;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long t = ts->tv_sec * 1000000000LL + ts->tv_nsec + offset();
        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
    }
    return rc;
}
"""

DAY = 86400


@pytest.fixture(scope="module")
def walljump(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the wall-clock shim (apt install gcc)")
    folder = tmp_path_factory.mktemp("walljump")
    (folder / "walljump.c").write_text(WALLJUMP_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(folder / "walljump.so"),
                    str(folder / "walljump.c"), "-ldl"], check=True, capture_output=True, timeout=60)
    return folder / "walljump.so"


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_wall_clock_jumps(runs, walljump):
    run = runs()
    offset = run.workdir / "wall-offset"
    offset.write_text("0")
    daemon = run.start(env={"LD_PRELOAD": str(walljump), "WALLJUMP_FILE": str(offset)})
    before = settled(run)
    healthy_fps = run.box.frame_rate(3.0)
    assert run.box.command("mood", "sad 1")["status"] == "ok"  # held for 1 minute of monotonic time

    for jump in (-DAY, +2 * DAY):  # back a day (an RTC-less boot), then forward past the override
        offset.write_text(str(jump))
        mark, jumped = run.box.mark(), time.monotonic()
        assert run.box.command("mood", "angry 1")["status"] == "ok"
        event = run.box.event(lambda e: e["event"] == "mood_changed" and e["mood"] == "angry", after=mark)
        # The daemon really saw the jump: its event time is the shifted wall clock.
        assert abs(_epoch(event["at"]) - (time.time() + jump)) < 600, event
        run.box.advance(10)
        state = run.box.latest_state()
        # The override runs on monotonic time: jumping the wall clock 2 days ahead does not end it.
        assert state["mood"] == "angry" and state["override"] is True, state
        assert run.box.frame_rate(3.0) >= 0.5 * healthy_fps
        assert daemon.count_notices("WATCHDOG=1", start=jumped) >= 2
        assert run.box.command("mood", "sad 1")["status"] == "ok"
        assert run.box.command("volume", 50)["status"] == "ok"  # Spotify (token expiry is wall time) still works

    assert run.box.command("mood", "clear")["status"] == "ok"
    run.box.event(lambda e: e["event"] == "mood_changed" and not e["override"])
    assert daemon.alive
    assert_kept(run, before)
    angry = [row for row in history_rows(run.state) if row[2] == "angry"]
    assert len(angry) == 2 and angry[1][1] - angry[0][1] > 2 * DAY  # rows carry the wall time they happened at


def test_stabiliser_decides_on_monotonic_time_only():
    """The same readings give the same moods whatever the wall clock does; only ``since`` follows it."""
    config = MoodConfig(smoothing_s=0.5, min_dwell_s=1.0, no_face_s=2.0)
    happy = tuple(0.9 if e == "happy" else 0.1 / 6 for e in EMOTIONS)
    sad = tuple(0.9 if e == "sad" else 0.1 / 6 for e in EMOTIONS)
    # 0.2 s apart: 16 s of a face, 2 s without, over and over; happy, then sad.
    readings = [FaceReading(100.0 + i * 0.2, (0, 0, 48, 48) if i % 90 < 80 else None,
                            (happy if i < 150 else sad) if i % 90 < 80 else None) for i in range(400)]

    def replay(wall) -> list:
        stabiliser = Stabiliser(config, wall_clock=wall)
        changes = []
        for i, reading in enumerate(readings):
            now[0] = reading.timestamp
            if i == 250:  # a 10 s override, in reading (monotonic) time
                changes.append(stabiliser.override("fear", reading.timestamp + 10.0))
            changes.append(stabiliser.update(reading))
        return [c for c in changes if c is not None]

    now = [0.0]
    steady = replay(lambda: 1.7e9 + now[0])
    jumps = {True: -DAY, False: 365 * DAY}
    jumping = replay(lambda: 1.7e9 + now[0] + (jumps[now[0] < 140.0] if now[0] > 120.0 else 0.0))
    assert len(steady) >= 5 and any(c.override for c in steady)
    assert [(c.mood, c.previous, round(c.confidence, 9), c.override) for c in jumping] == \
           [(c.mood, c.previous, round(c.confidence, 9), c.override) for c in steady]
    assert {round(j.since - s.since) for j, s in zip(jumping, steady)} - {0, -DAY, 365 * DAY} == set()
    assert any(j.since != s.since for j, s in zip(jumping, steady))


# --- SIGTERM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("load", ["commands", "spotify-hung"])
def test_sigterm_under_load(runs, stack, load):
    """Exit 0 within 2 s, offline announced, history intact: under a command flood at 15 fps, or while
    a Spotify request hangs (the music output waits at most 1 s for it)."""
    run = runs(overrides={"camera": {"fps": 30.0}, "pipeline": {"fps": 15.0}})
    daemon = run.start()
    settled(run)
    stop = threading.Event()

    def flood() -> None:  # commands for the loop and for music, as fast as they go
        with Observer(stack.broker, ()) as sender:
            for i in range(100_000):
                if stop.is_set():
                    return
                if i % 2:
                    sender.publish(f"{run.box.base}/set/mood", ("sad 30", "angry 30")[i // 2 % 2], wait=False)
                else:
                    sender.publish(f"{run.box.base}/set/volume", str(20 + i % 50), wait=False)
                stop.wait(0.01)

    flooder = threading.Thread(target=flood, daemon=True)
    try:
        if load == "commands":
            flooder.start()
            wait_for(lambda: len(run.box.observer.on(run.box.response_topic)) >= 20, what="20 answered commands")
        else:
            hang = stack.spotify.fail("/v1/*", times=None, gate=threading.Event())
            run.box.observer.publish(f"{run.box.base}/set/next", "")
            assert hang.held.wait(30), "the next command never reached Spotify"
        before = committed(run)
        mark = run.box.mark()
        code, took = daemon.terminate()
    finally:
        stop.set()
        if flooder.is_alive():
            flooder.join(10)

    assert code == 0, daemon.tail()
    assert took < 2.0, f"stopped in {took:.2f} s"
    daemon.wait(lambda: daemon.notice("STOPPING=1"), 10, "STOPPING=1")
    daemon.wait_log("SIGTERM received")
    run.box.availability("offline", after=mark)  # said by the daemon itself on its way out
    retained = Observer(stack.broker, (run.box.availability_topic,))
    try:
        assert retained.retained()[run.box.availability_topic].text == "offline"
    finally:
        retained.close()
    assert_kept(run, before)
    with closing(sqlite3.connect(run.state / "history.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
