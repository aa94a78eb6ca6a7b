"""The music engine: moods and commands in, player calls and events out.

Single-threaded and clock-driven: the music output calls ``on_mood``,
``on_command`` and ``tick`` from its own thread, and ``tick`` says when it
wants to run next. Nothing here sleeps or raises into the caller.

Rules (issue 4):
- nothing playing: the first stable mood starts music at once;
- otherwise music changes at track boundaries, at most every ``min_change_s``,
  unless the user commands it (play, next, policy, feedback skip, a mood override);
- a mood change whose target equals the current one restarts nothing;
- a track after which the mood did not improve moves on to another
  playlist for that mood (the paper's step 4, tempered by the bandit);
- ``no_face`` for ``no_face_pause_s`` pauses (or keeps playing);
- playback state is re-read from the device, never assumed: a pause or a
  track change made on a phone is followed, not fought.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from device.config import MusicConfig, PlaylistConfig
from device.events import (
    NO_FACE,
    Command,
    CommandResult,
    ComponentState,
    Feedback,
    MoodChanged,
    PlaybackState,
    TrackFinished,
    TrackStarted,
)
from device.music import policy
from device.music.cache import TrackCache
from device.music.history import History, Outcome, TrackRecord
from device.music.learning import Bandit, choose_playlist
from device.music.player import Backoff, Playback, Player, Track

__all__ = ["COMMANDS", "MusicEngine"]

log = logging.getLogger(__name__)

COMMANDS = frozenset({"play", "pause", "next", "policy", "volume", "feedback"})
#: Read the device this soon after starting music, to see what really plays, s.
CONFIRM_S = 2.0
#: State reads after a play call before the box follows whatever the device shows.
MAX_CONFIRMS = 3
#: Poll this long after a track should have ended: the next one has begun by then, s.
END_MARGIN_S = 1.0
#: A track whose end was within this of being reached counts as played to its end, ms.
END_SLACK_MS = 5000
#: Gap between two playlist cache refreshes, and the retry delay after a failed one, s.
CACHE_GAP_S = 10.0
CACHE_RETRY_S = 3600.0


@dataclass
class _Session:
    """What the engine knows about the music now playing."""

    target: policy.Target | None  # None: music the box found playing, not its own choice
    playlist: PlaylistConfig | None
    policy: str
    mood_before: str
    mark: float  # clock time up to which mood time is counted
    track: Track | None = None  # None until read back from the device
    started: float = 0.0  # clock time the track was first seen
    started_wall: float = 0.0
    progress_ms: int = 0  # at ``polled``
    polled: float = 0.0
    feedback: str | None = None
    moods: dict[str, float] = field(default_factory=dict)  # seconds per mood during the track
    confirms: int = 0  # state reads waiting for the device to show the music started


@dataclass(frozen=True)
class _Paused:
    target: policy.Target | None
    playlist: PlaylistConfig | None
    why: str  # "user", "no_face", "policy off", "elsewhere"


class MusicEngine:
    def __init__(self, config: MusicConfig, player: Player, cache: TrackCache, history: History | None,
                 publish: Callable[[object], None], *, bandit: Bandit | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.player = player
        self.cache = cache
        self.history = history
        self.publish = publish
        self.bandit = bandit or Bandit(feedback_weight=config.feedback_weight)
        self.clock = clock
        self.wall = wall
        self.policy = config.policy
        self.mood = ""
        self.session: _Session | None = None
        self.pending: policy.Target | None = None
        self.paused: _Paused | None = None
        self.last_change: float | None = None
        self._no_face_since: float | None = None
        self._want: tuple[policy.Target, PlaylistConfig | None] | None = None  # a start that failed, to retry
        self._retry_at = 0.0
        self._start_backoff = Backoff(5.0, 300.0)
        self._next_poll = 0.0
        self._next_cache = 0.0
        self._cache_retry: dict[str, float] = {}
        self._volume_set = False
        self._shown: tuple[Any, ...] | None = None
        self._health: str | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Load what was learned and cached; the first tick reads the device."""
        if self.history is not None:
            outcomes = self.history.outcomes()
            for outcome in outcomes:
                self.bandit.observe(outcome)
            if outcomes:
                log.info("music: learned from %d past tracks", len(outcomes))
        known = self.cache.load(self.config.playlists)
        log.info("music: policy %s, %d playlists, %d cached tracks", self.policy, len(self.config.playlists), known)
        self._next_poll = self.clock()

    def close(self) -> None:
        if self.session is not None and self.session.track is not None:
            self._finish(completed=False)
        if self.history is not None:
            self.history.close()

    # -- moods ----------------------------------------------------------------

    def on_mood(self, event: MoodChanged) -> None:
        now = self.clock()
        self._count_mood(now)
        self.mood = event.mood
        if self.history is not None:
            self.history.add_mood(event.since, event.mood, event.previous, event.confidence, event.override)
        if event.mood == NO_FACE:
            self._no_face_since = now
            return
        self._no_face_since = None
        if self.policy == "off":
            return
        target = self._target(event.mood)
        if target is None:
            return
        if self.paused is not None:
            if self.paused.why == "no_face":
                self._resume_or_start(target, "back from no face")
            return
        if self.session is None and self._want is not None:
            self._want = (target, None)  # a start is already waiting for its retry
        elif self.session is None:
            self._change(target, "first mood")
        elif self.session.target is not None and self.session.target.key == target.key:
            self.pending = None  # the music playing already fits
        elif event.override:
            self._change(target, "mood override")
        else:
            self.pending = target
            log.info("music: %s wants %s; changing at the end of this track", event.mood, target.label)

    def _count_mood(self, now: float) -> None:
        session = self.session
        if session is not None and self.mood:
            session.moods[self.mood] = session.moods.get(self.mood, 0.0) + max(0.0, now - session.mark)
            session.mark = now

    def _target(self, mood: str, step: int = 0) -> policy.Target | None:
        return policy.target_for(self.policy, mood, step=step, iso_tracks=self.config.iso_tracks)

    # -- choosing and starting ----------------------------------------------------

    def _choose(self, target: policy.Target, avoid: str | None = None) -> PlaylistConfig | None:
        fitting = policy.candidates(target, self.config.playlists)
        bandit = self.bandit if self.config.learning else None
        uri = choose_playlist([p.uri for p in fitting], target.mood, bandit, avoid)
        return next((p for p in fitting if p.uri == uri), None)

    def _change(self, target: policy.Target, reason: str, playlist: PlaylistConfig | None = None) -> bool:
        """Start music for ``target`` now; on failure, retry later with backoff."""
        now = self.clock()
        playlist = playlist or self._choose(target)
        if playlist is None:
            log.warning("music: no playlist fits %s; add one to [[music.playlists]]", target.label)
            self._want = None
            return False
        if self.session is not None and self.session.track is not None:
            self._finish(completed=False)
        log.info("music: %s -> %s (%s, %s)", reason, playlist.name, target.label, self.policy)
        if not self._play(playlist):
            self._want = (target, playlist)
            # Rate limits and network errors: the player's own wait. A missing device or account: back off here.
            waiting = self.player.ready_in()
            self._retry_at = now + (waiting if waiting > 0 else self._start_backoff.fail())
            self.session = None
            self._health_changed()
            return False
        self._want = None
        self._start_backoff.reset()
        self.pending = None
        self.paused = None
        self.last_change = now
        self.session = _Session(target, playlist, target.policy, self.mood, now)
        self._next_poll = now + CONFIRM_S
        if not self._volume_set and self.config.volume >= 0:
            self._volume_set = self.player.set_volume(self.config.volume)
        self._health_changed()
        return True

    def _play(self, playlist: PlaylistConfig) -> bool:
        if self.player.play(context_uri=playlist.uri):
            return True
        # The playlist itself cannot be played (gone, not readable by this app): its cached tracks still can.
        if self.player.last_error in ("not_found", "forbidden", "bad_request"):
            uris = [t.uri for t in self.cache.tracks(playlist.uri)][:100]
            if uris and self.player.play(uris=uris):
                log.info("music: playing %d cached tracks of %s by URI", len(uris), playlist.name)
                return True
        return False

    def _resume_or_start(self, target: policy.Target | None, reason: str) -> bool:
        paused = self.paused
        if paused is not None and paused.target is not None and (target is None or paused.target.key == target.key):
            if self.player.resume():
                now = self.clock()
                self.paused = None
                self.session = _Session(paused.target, paused.playlist, paused.target.policy, self.mood, now)
                self._next_poll = now + CONFIRM_S
                log.info("music: %s, resuming %s", reason, paused.playlist.name if paused.playlist else "")
                return True
        if target is None:
            return False
        self.paused = None
        return self._change(target, reason)

    # -- the clock ------------------------------------------------------------------

    def tick(self) -> float:
        """Do what is due; returns the seconds until the next tick is wanted."""
        now = self.clock()
        wait = self.player.ready_in()
        if wait > 0:
            self._health_changed()
            return wait
        if self._no_face_due(now):
            self._pause("no_face")
        if self._want is not None and now >= self._retry_at:
            target, playlist = self._want
            self._change(target, "retry", playlist)
        if now >= self._next_poll:
            self._poll()
        elif now >= self._next_cache and self.player.ready_in() == 0:
            self._refresh_cache()
        self._health_changed()
        deadlines = [self._next_poll, self._next_cache]
        if self._want is not None:
            deadlines.append(self._retry_at)
        if self._no_face_since is not None and self.session is not None and self.config.no_face == "pause":
            deadlines.append(self._no_face_since + self.config.no_face_pause_s)
        return max(0.05, min(deadlines) - self.clock(), self.player.ready_in())

    def _no_face_due(self, now: float) -> bool:
        return (self.config.no_face == "pause" and self._no_face_since is not None and self.session is not None
                and now - self._no_face_since >= self.config.no_face_pause_s)

    def _refresh_cache(self) -> None:
        now = self.clock()
        self._next_cache = now + CACHE_GAP_S
        if self.player.health.state in ("login_needed", "unreachable", "rate_limited"):
            return
        for playlist in self.config.playlists:
            if self._cache_retry.get(playlist.uri, 0.0) > now or not self.cache.due(playlist.uri):
                continue
            tracks = self.player.playlist_items(playlist.uri)
            if tracks is None:
                self._cache_retry[playlist.uri] = now + CACHE_RETRY_S
                log.warning("music: could not read playlist %s; using its cached tracks", playlist.name)
            else:
                self.cache.store(playlist, tracks)
                log.info("music: cached %d tracks of %s", len(tracks), playlist.name)
            return
        self._next_cache = now + CACHE_RETRY_S

    # -- reading the device ----------------------------------------------------------

    def _poll(self) -> None:
        now = self.clock()
        state = self.player.state()
        if state is None:
            self._next_poll = now + max(self.player.ready_in(), self.config.poll_s)
            self._show(None)
            return
        session = self.session
        if state.track is None:
            self._stopped(now)
        elif not state.is_playing:
            self._paused_elsewhere(now, state)
        elif session is None:
            self._adopt(now, state)
        elif session.track is None:
            if self._switched(session, state):
                self._began(now, state)
        elif state.track.uri != session.track.uri or state.progress_ms + END_SLACK_MS < session.progress_ms:
            self._boundary(now, state)
        if self.session is not None and self.session.track is not None and state.is_playing:
            self.session.progress_ms, self.session.polled = state.progress_ms, now
        playing = state.is_playing and state.track is not None
        gap = min(self.config.poll_s, state.remaining_s + END_MARGIN_S) if playing else self.config.idle_poll_s
        if self.session is not None and self.session.track is None:
            gap = CONFIRM_S  # music was just started or skipped: see what plays
        self._next_poll = now + max(1.0, gap)
        self._show(state)

    def _stopped(self, now: float) -> None:
        """Nothing is loaded any more: the playlist ran out, or someone stopped it."""
        if self.session is None:
            return
        self._finish(completed=self._reached_end(now))
        self.session = None
        target = self._target(self.mood) if self.paused is None else None
        if target is not None:
            self._change(target, "playlist ended")

    def _paused_elsewhere(self, now: float, state: Playback) -> None:
        if self.session is None or self.paused is not None:
            return
        log.info("music: paused on the device or another app; following")
        self._finish(completed=False)
        self.paused = _Paused(self.session.target, self.session.playlist, "elsewhere")
        self.session = None

    def _adopt(self, now: float, state: Playback) -> None:
        """Music is playing that the box did not start (a restart, a phone): follow it."""
        if self.paused is not None:
            log.info("music: resumed on the device or another app")
        playlist = next((p for p in self.config.playlists if p.uri == state.context_uri), None)
        target = self.paused.target if self.paused is not None else None
        self.paused = None
        self.session = _Session(target, playlist, target.policy if target else "user", self.mood, now)
        self._began(now, state)

    def _switched(self, session: _Session, state: Playback) -> bool:
        """Has the device caught up with the music just started? The Web API's state can lag a play call."""
        session.confirms += 1
        expected = session.playlist.uri if session.playlist is not None else None
        caught_up = state.context_uri in (None, expected) or expected is None
        return caught_up or session.confirms > MAX_CONFIRMS  # someone else changed it meanwhile: follow that

    def _began(self, now: float, state: Playback) -> None:
        session = self.session
        assert session is not None and state.track is not None
        track = state.track
        if not track.name:
            track = self.cache.track(track.uri) or track
        session.track, session.started, session.started_wall = track, now, self.wall()
        session.mood_before, session.moods, session.mark = self.mood, {}, now
        playlist = session.playlist
        target = session.target
        self.publish(TrackStarted(track.uri, track.name, track.artists, track.album, track.duration_ms,
                                  playlist.name if playlist else "", playlist.uri if playlist else "",
                                  session.policy, target.label if target else "", self.mood, session.started_wall))

    def _reached_end(self, now: float) -> bool:
        session = self.session
        if session is None or session.track is None:
            return False
        played = session.progress_ms + (now - session.polled) * 1000.0
        return played >= session.track.duration_ms - END_SLACK_MS

    def _boundary(self, now: float, state: Playback) -> None:
        """A new track has begun: judge the last one, then keep going or change."""
        session = self.session
        assert session is not None
        improved = self._finish(completed=self._reached_end(now))
        target = session.target
        change = self._next_target(now, session, improved)
        if change is not None:
            wanted, avoid, reason = change
            playlist = self._choose(wanted, avoid)
            if playlist is not None and session.playlist is not None and playlist.uri == session.playlist.uri:
                target, self.pending = wanted, None  # the playing playlist fits the new target too: keep it
            elif playlist is not None and self._change(wanted, reason, playlist):
                return
        self.session = _Session(target, session.playlist, target.policy if target else session.policy,
                                self.mood, now)
        self._began(now, state)

    def _next_target(self, now: float, session: _Session,
                     improved: bool | None) -> tuple[policy.Target, str | None, str] | None:
        if self.policy == "off" or self.mood in ("", NO_FACE):
            return None
        if self.last_change is not None and now - self.last_change < self.config.min_change_s:
            return None
        current = session.target
        if self.pending is not None:
            return self.pending, None, "mood changed"
        if current is None:
            target = self._target(self.mood)
            return (target, None, "taking over") if target is not None else None
        if current.policy == "iso" and not current.final and current.mood == self.mood:
            return self._target(self.mood, current.step + 1) or current, None, "iso step"
        if improved is False and session.playlist is not None and current.policy != "user":
            return current, session.playlist.uri, f"{session.mood_before} did not improve"
        return None

    def _finish(self, completed: bool) -> bool | None:
        """Record the track that just ended; returns whether it helped (None: not judged)."""
        session = self.session
        if session is None or session.track is None:
            return None
        now = self.clock()
        self._count_mood(now)
        track, playlist = session.track, session.playlist
        seen = {m: s for m, s in session.moods.items() if m != NO_FACE} or session.moods
        during = max(seen, key=seen.get) if seen else session.mood_before
        weighted = [(policy.valence(m), s) for m, s in seen.items() if policy.valence(m) is not None]
        total = sum(s for _, s in weighted)
        valence_during = sum(v * s for v, s in weighted) / total if total > 0 else None
        improved = policy.improved(session.mood_before, self.mood) if completed else None
        played = now - session.started
        if self.history is not None:
            self.history.add_track(TrackRecord(
                session.started_wall, session.started_wall + played, track.uri, track.name, track.artists,
                playlist.uri if playlist else "", playlist.name if playlist else "", session.policy,
                session.target.label if session.target else "", session.mood_before,
                policy.valence(session.mood_before), during, valence_during, self.mood, policy.valence(self.mood),
                improved, completed, session.feedback, played,
            ))
        if playlist is not None and session.mood_before in policy.CIRCUMPLEX:
            self.bandit.observe(Outcome(session.mood_before, playlist.uri, improved, session.feedback))
        self.publish(TrackFinished(track.uri, track.name, playlist.uri if playlist else "", session.mood_before,
                                   during, self.mood, improved, completed, session.feedback, played))
        session.track = None
        return improved

    def _pause(self, why: str) -> bool:
        session = self.session
        if session is None:
            return True
        if not self.player.pause():
            return False
        log.info("music: paused (%s)", why)
        self._finish(completed=False)
        self.paused = _Paused(session.target, session.playlist, why)
        self.session = None
        self._next_poll = self.clock() + self.config.idle_poll_s
        return True

    # -- commands -----------------------------------------------------------------------

    def on_command(self, command: Command) -> CommandResult:
        handler = getattr(self, f"_cmd_{command.name}", None)
        if command.name not in COMMANDS or handler is None:
            return CommandResult(command, ok=False, error=f"music does not handle '{command.name}'")
        wait = self.player.ready_in()
        if wait > 0 and command.name != "policy":
            health = self.player.health
            return CommandResult(command, ok=False, error=f"Spotify is {health.state.replace('_', ' ')}; "
                                                          f"try again in {wait:.0f} s")
        try:
            ok, error, data = handler(command.value)
        except (TypeError, ValueError) as exc:
            ok, error, data = False, str(exc), {}
        if not ok and not error:
            health = self.player.health
            error = f"Spotify: {health.state.replace('_', ' ')}" + (f" ({health.detail})" if health.detail else "")
        self._next_poll = min(self._next_poll, self.clock() + CONFIRM_S)
        self._health_changed()
        return CommandResult(command, ok=ok, error="" if ok else error, data=data)

    def _cmd_play(self, value: Any) -> tuple[bool, str, dict]:
        if value not in (None, ""):
            wanted = str(value).strip()
            playlist = next((p for p in self.config.playlists
                             if wanted in (p.uri, p.name) or wanted.casefold() == p.name.casefold()), None)
            if playlist is None:
                return False, f"no configured playlist named or with uri {wanted!r}", {}
            target = policy.Target("user", self.mood or "neutral", f"user: {playlist.name}",
                                   playlist.valence, playlist.arousal)
            return self._change(target, "user asked", playlist), "", {"playlist": playlist.name}
        if self.session is not None:
            return self.player.resume(), "", {}
        target = self._target(self.mood) if self.mood not in ("", NO_FACE) else None
        if self.paused is None and target is None:
            target = policy.target_for("uplift", "neutral")  # no mood yet: the everyday mix
        ok = self._resume_or_start(target, "user asked")
        return ok, "" if ok or target is not None else "nothing to resume", {}

    def _cmd_pause(self, value: Any) -> tuple[bool, str, dict]:
        if self.session is None:
            return True, "", {"already": True}
        return self._pause("user"), "", {}

    def _cmd_next(self, value: Any) -> tuple[bool, str, dict]:
        return self._skip(None)

    def _skip(self, feedback: str | None) -> tuple[bool, str, dict]:
        session = self.session
        if session is None:
            return False, "nothing is playing", {}
        if feedback is not None:
            session.feedback = feedback
        if self.pending is not None:  # a user's skip is a boundary the pending change may use at once
            return self._change(self.pending, "skipped to the pending change"), "", {}
        if not self.player.next():
            return False, "", {}
        self._finish(completed=False)
        self.session = _Session(session.target, session.playlist, session.policy, self.mood, self.clock())
        return True, "", {}

    def _cmd_feedback(self, value: Any) -> tuple[bool, str, dict]:
        if value not in ("like", "skip"):
            raise ValueError(f"feedback must be 'like' or 'skip', not {value!r}")
        session = self.session
        if session is None or session.track is None:
            return False, "nothing is playing to rate", {}
        track, playlist = session.track, session.playlist
        self.publish(Feedback(value, track.uri, track.name, playlist.uri if playlist else "", session.mood_before))
        if value == "skip":
            return self._skip("skip")
        session.feedback = "like"
        return True, "", {"track": track.name}

    def _cmd_volume(self, value: Any) -> tuple[bool, str, dict]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ValueError(f"volume must be a number from 0 to 100, not {value!r}")
        ok = self.player.set_volume(int(round(value)))
        return ok, "", {"volume": int(round(value))}

    def _cmd_policy(self, value: Any) -> tuple[bool, str, dict]:
        if value not in policy.POLICIES:
            raise ValueError(f"policy must be one of {', '.join(policy.POLICIES)}, not {value!r}")
        self.policy = value
        self.pending = None
        log.info("music: policy %s", value)
        if value == "off":
            return self._pause("policy off"), "", {"policy": value}
        target = self._target(self.mood) if self.mood else None
        current = self.session.target if self.session is not None else None
        if target is not None and (current is None or current.key != target.key) and self.player.ready_in() == 0:
            self._change(target, f"policy {value}")
        return True, "", {"policy": value}

    # -- telling the others -----------------------------------------------------------

    def _health_changed(self) -> None:
        health = self.player.health
        if health.state != self._health:
            self._health = health.state
            self.publish(ComponentState("spotify", health.state, health.detail, error=health.state != "ok"))

    def _show(self, state: Playback | None) -> None:
        """Publish now-playing when something a person would notice changed."""
        session = self.session
        track = state.track if state is not None else (session.track if session is not None else None)
        playing = bool(state is not None and state.is_playing and state.track)  # unknown is not playing
        playlist = session.playlist.name if session is not None and session.playlist else ""
        target = session.target.label if session is not None and session.target else ""
        device = state.device_name if state is not None else ""
        volume = state.volume if state is not None else None
        shown = (playing, track.uri if track else "", playlist, self.policy, target, device, volume)
        if shown == self._shown:
            return
        self._shown = shown
        self.publish(PlaybackState(
            playing, track.name if track else "", track.artists if track else "", track.album if track else "",
            playlist, self.policy, target, device, volume, track.duration_ms if track else 0,
            state.progress_ms if state is not None else 0, self.wall(),
        ))
