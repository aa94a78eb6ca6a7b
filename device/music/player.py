"""The Player protocol the music engine drives, and a dry-run player for the demo.

A Player never raises into the engine: every method returns success, and
``health`` says what is wrong (login_needed, premium_required, device_missing,
device_restricted, rate_limited, unreachable). ``ready_in`` tells the engine
how long to leave it alone (Retry-After, error backoff).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

__all__ = [
    "HEALTH_STATES",
    "Backoff",
    "DryRunPlayer",
    "Health",
    "Playback",
    "PlaybackSim",
    "Player",
    "Track",
]

HEALTH_STATES = ("ok", "login_needed", "premium_required", "device_missing", "device_restricted",
                 "rate_limited", "unreachable")


@dataclass(frozen=True)
class Track:
    uri: str
    name: str
    artists: str = ""
    album: str = ""
    duration_ms: int = 0

    @property
    def id(self) -> str:
        return self.uri.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class Playback:
    """The device's state as last read; ``track`` None means nothing is loaded."""

    is_playing: bool
    track: Track | None = None
    progress_ms: int = 0
    context_uri: str | None = None
    device_id: str | None = None
    device_name: str = ""
    volume: int | None = None

    @property
    def remaining_s(self) -> float:
        if self.track is None:
            return 0.0
        return max(0.0, (self.track.duration_ms - self.progress_ms) / 1000.0)


@dataclass(frozen=True)
class Health:
    state: str = "ok"
    detail: str = ""


class Player(Protocol):
    """A music player the engine controls. Methods return success and never raise."""

    #: Why the last call failed: "" (it did not), "not_found" / "forbidden" / "bad_request" (the
    #: music itself cannot be played), "device", "premium", "restricted", "auth", "rate_limited", "unreachable".
    last_error: str

    @property
    def health(self) -> Health: ...

    def ready_in(self) -> float:
        """Seconds until the player may be called again (0 = now)."""
        ...

    def connect(self) -> bool:
        """Find the configured device and make it the active one (without starting music)."""
        ...

    def play(self, context_uri: str | None = None, uris: Sequence[str] | None = None) -> bool: ...

    def pause(self) -> bool: ...

    def resume(self) -> bool: ...

    def next(self) -> bool: ...

    def set_volume(self, percent: int) -> bool: ...

    def state(self) -> Playback | None:
        """The device's state, re-read; None when it could not be read."""
        ...

    def playlist_items(self, uri: str) -> list[Track] | None:
        """Every track of a playlist (all pages); None when it could not be read."""
        ...


class Backoff:
    """Exponential backoff with jitter, reset by a success."""

    def __init__(self, first_s: float = 2.0, max_s: float = 300.0, rng: random.Random | None = None) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def fail(self, at_least_s: float = 0.0) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        delay = min(self.max_s, self.first_s * 2 ** (self.failures - 1))
        # Jitter keeps boxes that lost the network together from retrying in step.
        delay *= 0.8 + 0.4 * self._rng.random()
        return max(at_least_s, min(delay, self.max_s))

    def reset(self) -> None:
        self.failures = 0


class PlaybackSim:
    """A Connect device's queue and clock without a network: the dry run's and the fake server's player."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.tracks: list[Track] = []
        self.context_uri: str | None = None
        self.index = 0
        self.playing = False
        self.volume = 50
        self._position_ms = 0.0  # at self._mark
        self._mark = clock()

    def load(self, tracks: Sequence[Track], context_uri: str | None = None, index: int = 0) -> None:
        self.tracks = list(tracks)
        self.context_uri = context_uri
        self.index = min(max(index, 0), max(len(self.tracks) - 1, 0))
        self._position_ms = 0.0
        self._mark = self._clock()
        self.playing = bool(self.tracks)

    def _advance(self) -> None:
        now = self._clock()
        if self.playing:
            self._position_ms += (now - self._mark) * 1000.0
            while self.tracks and self._position_ms >= self.tracks[self.index].duration_ms:
                self._position_ms -= self.tracks[self.index].duration_ms
                if self.index + 1 >= len(self.tracks):  # end of the list: stop, like repeat off
                    self.index, self._position_ms, self.playing = 0, 0.0, False
                    self.tracks, self.context_uri = [], None
                    break
                self.index += 1
        self._mark = now

    def pause(self) -> None:
        self._advance()
        self.playing = False

    def resume(self) -> bool:
        self._advance()
        self.playing = bool(self.tracks)
        return self.playing

    def next(self) -> bool:
        self._advance()
        if not self.tracks:
            return False
        if self.index + 1 >= len(self.tracks):
            self.index, self.playing, self.tracks, self.context_uri = 0, False, [], None
        else:
            self.index += 1
        self._position_ms = 0.0
        return True

    def snapshot(self) -> Playback:
        self._advance()
        if not self.tracks:
            return Playback(is_playing=False, volume=self.volume)
        return Playback(is_playing=self.playing, track=self.tracks[self.index],
                        progress_ms=int(self._position_ms), context_uri=self.context_uri, volume=self.volume)


class DryRunPlayer:
    """Plays nothing, but behaves like a healthy device: for ``moodbox demo`` and a box without an account.

    Track lists come from ``library`` (the track cache, when the box has one)
    or are made up as "<playlist name> 1..20", three minutes each.
    """

    DEVICE = "dry-run"
    last_error = ""

    def __init__(self, library: Callable[[str], list[Track]], names: dict[str, str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._library = library
        self._names = names
        self.sim = PlaybackSim(clock)

    @property
    def health(self) -> Health:
        return Health("ok", "dry run: no music is played")

    def ready_in(self) -> float:
        return 0.0

    def connect(self) -> bool:
        return True

    def playlist_items(self, uri: str) -> list[Track] | None:
        name = self._names.get(uri, uri.rsplit(":", 1)[-1])
        playlist_id = uri.rsplit(":", 1)[-1]
        return [Track(f"spotify:track:dryrun{playlist_id}{i:02d}", f"{name} {i + 1}", "Dry Run", name, 180_000)
                for i in range(20)]

    def play(self, context_uri: str | None = None, uris: Sequence[str] | None = None) -> bool:
        if context_uri:
            tracks = self._library(context_uri) or self.playlist_items(context_uri) or []
        else:
            tracks = [Track(uri, uri.rsplit(":", 1)[-1], duration_ms=180_000) for uri in uris or ()]
        self.sim.load(tracks, context_uri)
        return bool(tracks)

    def pause(self) -> bool:
        self.sim.pause()
        return True

    def resume(self) -> bool:
        return self.sim.resume()

    def next(self) -> bool:
        return self.sim.next()

    def set_volume(self, percent: int) -> bool:
        self.sim.volume = percent
        return True

    def state(self) -> Playback:
        return replace(self.sim.snapshot(), device_id=self.DEVICE, device_name=self.DEVICE)
