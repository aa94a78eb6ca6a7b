"""The music output: moods and music commands in, Spotify Connect playback out.

The bus already calls ``handle`` on this output's own thread, but the engine
also needs a clock (poll the device near each track's end, retry after a
Retry-After) and may wait on the network for up to ``[spotify] timeout_s``.
So ``handle`` only drops the event into an inbox and returns; one worker
thread owns the engine, the player and the history database. Neither a
slow Spotify nor a 429 storm can reach the camera loop: the bus never blocks
its publisher, and this output never blocks the bus.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from device.bus import Bus
from device.config import Config
from device.events import Command, CommandResult, ComponentState, MoodChanged
from device.music.engine import COMMANDS, MusicEngine

__all__ = ["MusicOutput", "create"]

log = logging.getLogger(__name__)

#: Moods and commands waiting for the engine; moods arrive seconds apart, so this never fills in practice.
INBOX = 64
#: Wait this long for the worker at stop, s. Not a whole request timeout: the daemon must stop
#: within 2 s, and a Spotify call hung at that moment costs at most the unfinished track's row.
STOP_GRACE_S = 1.0

EngineFactory = Callable[[Callable[[object], None]], MusicEngine]


class MusicOutput:
    name = "music"
    commands = COMMANDS

    def __init__(self, build: EngineFactory) -> None:
        self._build = build
        self._inbox: queue.Queue[object] = queue.Queue(maxsize=INBOX)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus: Bus | None = None

    def start(self, bus: Bus) -> None:
        self._bus = bus
        self._thread = threading.Thread(target=self._run, name="music", daemon=True)
        self._thread.start()

    def handle(self, event: object) -> None:
        if not isinstance(event, MoodChanged) and not (isinstance(event, Command) and event.name in COMMANDS):
            return
        try:
            self._inbox.put_nowait(event)
        except queue.Full:
            if isinstance(event, Command) and self._bus is not None:
                self._bus.publish(CommandResult(event, ok=False, error="music is busy; try again"))
            else:
                log.warning("music: inbox full, %s dropped", type(event).__name__)

    def _run(self) -> None:
        assert self._bus is not None
        publish = self._bus.publish
        try:
            engine = self._build(publish)
            engine.start()
        except Exception as exc:  # a broken state dir disables music, not the box
            log.exception("music could not start")
            publish(ComponentState("spotify", "unreachable", f"music could not start: {exc}", error=True))
            self._refuse_commands(str(exc))
            return
        wait = 0.0
        while not self._stopping.is_set():
            try:
                event = self._inbox.get(timeout=wait)
            except queue.Empty:
                event = None
            if self._stopping.is_set():
                break
            try:
                if isinstance(event, MoodChanged):
                    engine.on_mood(event)
                elif isinstance(event, Command):
                    publish(engine.on_command(event))
                wait = engine.tick()
            except Exception:  # a bug in the engine must not end the music thread
                log.exception("music engine failed on %s", type(event).__name__ if event else "tick")
                if isinstance(event, Command):
                    publish(CommandResult(event, ok=False, error="music failed; see the log"))
                wait = 5.0
        try:
            engine.close()
        except Exception:
            log.exception("music engine failed to close")

    def _refuse_commands(self, why: str) -> None:
        assert self._bus is not None
        while not self._stopping.is_set():
            try:
                event = self._inbox.get(timeout=1.0)
            except queue.Empty:
                continue
            if isinstance(event, Command):
                self._bus.publish(CommandResult(event, ok=False, error=f"music is unavailable: {why}"))

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._inbox.put_nowait(None)  # wake the worker
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(STOP_GRACE_S)
            if self._thread.is_alive():
                log.warning("music thread still waiting on Spotify at stop")


def create(config: Config, context) -> MusicOutput | None:
    """The music output, or None when ``[spotify] enabled = false`` (the demo always has music)."""
    if not config.spotify.enabled and not context.demo:
        return None
    from device.music.cache import TrackCache
    from device.music.history import History
    from device.music.player import DryRunPlayer
    from device.music.spotify import SpotifyPlayer

    state_dir = context.state_dir

    def build(publish: Callable[[object], None]) -> MusicEngine:
        cache = TrackCache(state_dir / "tracks", config.music.cache_refresh_s)
        if context.demo:
            names = {p.uri: p.name for p in config.music.playlists}
            player = DryRunPlayer(cache.tracks, names)
        else:
            player = SpotifyPlayer(config.spotify, state_dir)
        return MusicEngine(config.music, player, cache, History(state_dir / "history.sqlite"), publish)

    return MusicOutput(build)
