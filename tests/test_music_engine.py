"""The music engine's rules, driving the real spotipy client against the fake server on a manual clock."""

from __future__ import annotations

import random

import pytest

from device.config import MusicConfig, PlaylistConfig
from device.events import (
    Command,
    ComponentState,
    Feedback,
    MoodChanged,
    PlaybackState,
    TrackFinished,
    TrackStarted,
)
from device.music.cache import TrackCache
from device.music.engine import MusicEngine
from device.music.history import History
from device.music.learning import Bandit
from device.music.spotify import SpotifyPlayer
from fake_spotify import FakeSpotify, ManualClock

TRACK_S = 180


def _playlist(name: str, moods: tuple[str, ...], valence: float, arousal: float) -> PlaylistConfig:
    return PlaylistConfig(uri=f"spotify:playlist:{name}", name=name.title(), moods=moods, valence=valence,
                          arousal=arousal)


PLAYLISTS = (
    _playlist("calm", ("angry", "disgust", "fear"), 0.4, -0.6),
    _playlist("piano", ("angry", "fear"), 0.3, -0.8),
    _playlist("uplift", ("sad",), 0.8, 0.6),
    _playlist("feelgood", ("sad", "happy"), 0.7, 0.4),
    _playlist("happy", ("happy",), 0.8, 0.7),
    _playlist("everyday", ("neutral", "surprise"), 0.3, 0.1),
    _playlist("blues", (), -0.6, -0.3),
    _playlist("metal", (), -0.4, 0.7),
)
URIS = {p.name.lower(): p.uri for p in PLAYLISTS}


def uris(*names: str) -> set[str]:
    return {URIS[n] for n in names}


class Rig:
    """An engine wired as the music output wires it, on a clock the test moves."""

    def __init__(self, tmp_path, fake: FakeSpotify | None = None, clock: ManualClock | None = None, **music):
        self.tmp_path = tmp_path
        self.clock = clock or ManualClock()
        self.fake = fake or FakeSpotify(self.clock).start()
        if fake is None:
            for playlist in PLAYLISTS:
                self.fake.add_playlist(playlist.uri, tracks=10, duration_ms=TRACK_S * 1000, name=playlist.name)
            self.fake.add_device("moodbox")
            self.fake.login(tmp_path)
        self.config = MusicConfig(**{"playlists": PLAYLISTS, **music})
        self.player = SpotifyPlayer(self.fake.spotify_config(), tmp_path, clock=self.clock)
        self.events: list[object] = []
        self.history = History(tmp_path / "history.sqlite")
        self.cache = TrackCache(tmp_path / "tracks")
        self.engine = MusicEngine(self.config, self.player, self.cache, self.history, self.events.append,
                                  bandit=Bandit(random.Random(0), self.config.feedback_weight),
                                  clock=self.clock, wall=lambda: 1.7e9 + self.clock())
        self.engine.start()
        self.last_mood: str | None = None

    def mood(self, mood: str, override: bool = False) -> None:
        self.engine.on_mood(MoodChanged(mood, self.last_mood, 0.8, {}, 1.7e9 + self.clock(), override))
        self.last_mood = mood
        self.engine.tick()

    def command(self, name: str, value=None):
        result = self.engine.on_command(Command(name, value))
        self.engine.tick()
        return result

    def run(self, seconds: float) -> None:
        """Let ``seconds`` pass, ticking whenever the engine asks to."""
        end = self.clock() + seconds
        while True:
            wait = self.engine.tick()
            remaining = end - self.clock()
            if remaining <= 1e-9:
                return
            self.clock.advance(min(wait, remaining))

    def plays(self) -> list[dict]:
        return [r.body or {} for r in self.fake.calls("PUT", "/v1/me/player/play") if r.status == 204]

    def contexts(self) -> list[str]:
        return [body.get("context_uri", "") for body in self.plays()]

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def close(self) -> None:
        self.engine.close()


@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path)
    yield made
    made.close()
    made.fake.stop()


# -- starting and changing --------------------------------------------------------------


def test_first_stable_mood_starts_music_at_once(rig):
    rig.mood("sad")
    assert len(rig.plays()) == 1 and rig.contexts()[0] in uris("uplift", "feelgood")
    rig.run(3)
    (started,) = rig.of(TrackStarted)
    assert started.mood == "sad" and started.target == "uplifting" and started.policy == "uplift"
    assert started.name.endswith("song 1") and started.duration_ms == TRACK_S * 1000
    assert rig.of(ComponentState)[0].state == "ok"
    assert rig.fake.calls("PUT", "/v1/me/player/volume")[0].query["volume_percent"] == "60"
    shown = rig.of(PlaybackState)[-1]
    assert shown.playing and shown.track == started.name and shown.target == "uplifting" and shown.device == "moodbox"


def test_a_new_mood_changes_music_at_the_track_boundary_not_mid_song(rig):
    rig.mood("sad")
    first = rig.contexts()[0]
    rig.run(30)
    rig.mood("happy")
    assert rig.engine.pending.label == "keep happy"
    rig.run(TRACK_S - 35)  # still inside the first track
    assert rig.contexts() == [first]
    rig.run(10)  # the track ended
    assert len(rig.contexts()) == 2 and rig.contexts()[1] in uris("happy", "feelgood")
    (finished,) = rig.of(TrackFinished)
    assert (finished.mood_before, finished.mood_during, finished.mood_after) == ("sad", "happy", "happy")
    assert finished.improved is True and finished.completed
    rows = rig.history._db.execute("SELECT mood_before, mood_after, improved, playlist_uri FROM tracks").fetchall()
    assert rows == [("sad", "happy", 1, first)]


def test_a_mood_with_the_same_target_restarts_nothing(rig):
    rig.mood("angry")
    rig.run(30)
    rig.mood("fear")  # calm music for both
    assert rig.engine.pending is None
    rig.run(TRACK_S - 40)
    assert len(rig.plays()) == 1


def test_changes_are_rate_limited(tmp_path):
    rig = Rig(tmp_path, min_change_s=400)
    try:
        rig.mood("sad")
        rig.run(30)
        rig.mood("angry")
        rig.run(2 * TRACK_S + 10 - 30)  # two boundaries, both within 400 s of the start
        assert len(rig.plays()) == 1 and len(rig.of(TrackStarted)) == 3
        rig.run(TRACK_S)
        assert len(rig.plays()) == 2 and rig.contexts()[1] in uris("calm", "piano")
    finally:
        rig.close()
        rig.fake.stop()


def test_no_improvement_moves_to_another_playlist_for_the_mood(rig):
    rig.mood("sad")
    rig.run(TRACK_S + 5)  # still sad at the end: step 4
    first, second = rig.contexts()
    assert {first, second} == uris("uplift", "feelgood")
    (finished,) = rig.of(TrackFinished)
    assert finished.improved is False
    assert rig.engine.bandit.posterior("sad", first) == (1.0, 2.0)


def test_a_new_target_the_playing_playlist_fits_keeps_it_playing(tmp_path):
    feelgood_first = tuple(sorted(PLAYLISTS, key=lambda p: p.name != "Feelgood"))
    rig = Rig(tmp_path, playlists=feelgood_first, learning=False)  # fixed mapping: the first listed
    try:
        rig.mood("sad")
        rig.run(30)
        rig.mood("happy")  # Feelgood is listed for sad and for happy
        rig.run(TRACK_S)
        assert rig.contexts() == [URIS["feelgood"]]
        assert [s.target for s in rig.of(TrackStarted)] == ["uplifting", "keep happy"]
        assert rig.engine.pending is None
    finally:
        rig.close()
        rig.fake.stop()


def test_improvement_keeps_the_playlist(rig):
    rig.mood("happy")
    rig.run(2 * TRACK_S + 5)
    assert len(rig.plays()) == 1 and len(rig.of(TrackStarted)) == 3
    assert [f.improved for f in rig.of(TrackFinished)] == [True, True]


def test_iso_path_steps_toward_the_target_one_track_at_a_time(tmp_path):
    rig = Rig(tmp_path, policy="iso", iso_tracks=3)
    try:
        rig.mood("sad")
        rig.run(3 * TRACK_S + 5)
        assert rig.contexts()[:2] == [URIS["blues"], URIS["everyday"]]
        assert rig.contexts()[2] in uris("uplift", "feelgood")
        assert [s.target for s in rig.of(TrackStarted)][:3] == ["iso sad 1/3", "iso sad 2/3", "iso sad 3/3"]
        valences = [next(p.valence for p in PLAYLISTS if p.uri == uri) for uri in rig.contexts()[:3]]
        assert valences == sorted(valences)
    finally:
        rig.close()
        rig.fake.stop()


def test_playlist_running_out_starts_the_next_music_at_once(rig):
    rig.fake.add_playlist(URIS["happy"], tracks=2, duration_ms=TRACK_S * 1000)
    rig.fake.add_playlist(URIS["feelgood"], tracks=2, duration_ms=TRACK_S * 1000)
    rig.mood("happy")
    rig.run(2 * TRACK_S + 30)  # every track of it played
    assert len(rig.plays()) == 2
    assert rig.of(TrackFinished)[-1].completed


# -- the user ------------------------------------------------------------------------------


def test_user_next_applies_a_pending_change_at_once(rig):
    rig.mood("sad")
    rig.run(30)
    rig.mood("happy")
    result = rig.command("next")
    assert result.ok and len(rig.plays()) == 2 and rig.engine.pending is None
    assert rig.of(TrackFinished)[0].completed is False and rig.of(TrackFinished)[0].improved is None


def test_user_next_without_a_change_skips_within_the_playlist(rig):
    rig.mood("happy")
    rig.run(10)
    assert rig.command("next").ok
    rig.run(3)
    assert rig.fake.count("POST", "/v1/me/player/next") == 1 and len(rig.plays()) == 1
    assert rig.of(TrackStarted)[-1].name.endswith("song 2")


def test_play_a_named_playlist(rig):
    rig.mood("sad")
    result = rig.command("play", "metal")
    assert result.ok and result.data == {"playlist": "Metal"} and rig.contexts()[-1] == URIS["metal"]
    bad = rig.command("play", "Polka")
    assert not bad.ok and "no configured playlist" in bad.error


def test_policy_switch_is_immediate_and_off_pauses(rig):
    rig.mood("sad")
    assert rig.command("policy", "match").ok
    assert rig.contexts()[-1] == URIS["blues"]
    assert rig.command("policy", "off").ok
    assert rig.fake.count("PUT", "/v1/me/player/pause") == 1
    rig.mood("happy")
    rig.run(60)
    assert len(rig.plays()) == 2
    wrong = rig.command("policy", "loud")
    assert not wrong.ok and "uplift, match, iso, off" in wrong.error


def test_volume_command(rig):
    rig.mood("sad")
    assert rig.command("volume", 35).ok
    assert rig.fake.calls("PUT", "/v1/me/player/volume")[-1].query["volume_percent"] == "35"
    for bad in (101, -1, "loud", True):
        result = rig.command("volume", bad)
        assert not result.ok and "0 to 100" in result.error


def test_like_and_skip_are_recorded_and_learned(rig):
    rig.mood("sad")
    rig.run(5)
    first = rig.contexts()[0]
    assert rig.command("feedback", "like").ok
    rig.run(TRACK_S)
    assert rig.of(TrackFinished)[0].feedback == "like"
    assert rig.of(Feedback)[0].value == "like" and rig.of(Feedback)[0].playlist_uri == first
    # one failure (still sad) and one like worth two outcomes
    assert rig.engine.bandit.posterior("sad", first) == (3.0, 2.0)
    rig.run(5)
    now_playing = rig.contexts()[-1]
    assert rig.command("feedback", "skip").ok
    skipped = rig.of(TrackFinished)[-1]
    assert skipped.feedback == "skip" and skipped.completed is False
    assert rig.engine.bandit.posterior("sad", now_playing)[1] >= 3.0
    assert not rig.command("feedback", "meh").ok


def test_pause_and_play_commands(rig):
    rig.mood("sad")
    rig.run(5)
    assert rig.command("pause").ok and rig.fake.sim.playing is False
    rig.mood("happy")  # a user's pause holds against new moods
    assert len(rig.plays()) == 1
    assert rig.command("play").ok
    assert len(rig.plays()) == 2 and rig.fake.sim.playing


# -- no face --------------------------------------------------------------------------------


def test_no_face_pauses_after_a_while_and_resumes_the_same_music(rig):
    rig.mood("sad")
    rig.run(10)
    rig.mood("no_face")
    rig.run(100)
    assert rig.fake.count("PUT", "/v1/me/player/pause") == 0
    rig.run(25)
    assert rig.fake.count("PUT", "/v1/me/player/pause") == 1 and not rig.fake.sim.playing
    rig.mood("sad")
    assert rig.plays()[-1] == {} and rig.fake.sim.playing  # resumed, not restarted


def test_back_from_no_face_with_another_target_starts_that(rig):
    rig.mood("sad")
    rig.run(10)
    rig.mood("no_face")
    rig.run(130)
    rig.mood("happy")
    assert rig.contexts()[-1] in uris("happy", "feelgood")


def test_no_face_keep_plays_on(tmp_path):
    rig = Rig(tmp_path, no_face="keep")
    try:
        rig.mood("sad")
        rig.run(10)
        rig.mood("no_face")
        rig.run(600)
        assert rig.fake.count("PUT", "/v1/me/player/pause") == 0 and rig.fake.sim.playing
    finally:
        rig.close()
        rig.fake.stop()


# -- the device's state wins ---------------------------------------------------------------------


def test_a_pause_made_on_a_phone_is_followed_not_fought(rig):
    rig.mood("sad")
    rig.run(10)
    rig.fake.sim.pause()  # someone paused in the Spotify app
    rig.run(25)
    assert rig.engine.paused is not None and rig.engine.paused.why == "elsewhere"
    assert not rig.of(PlaybackState)[-1].playing
    rig.mood("happy")
    rig.run(60)
    assert len(rig.plays()) == 1
    assert rig.command("play").ok and rig.fake.sim.playing


def test_after_a_restart_the_box_follows_what_plays_until_the_track_ends(rig, tmp_path):
    rig.mood("sad")
    rig.run(20)
    rig.close()
    again = Rig(tmp_path, fake=rig.fake, clock=rig.clock)
    again.run(1)
    assert again.of(TrackStarted)[0].playlist == rig.of(TrackStarted)[0].playlist
    again.mood("happy")
    again.run(100)
    assert len(rig.plays()) == 1  # not cut mid-song
    again.run(80)
    assert len(rig.plays()) == 2
    # what the first run learned was read back from the history
    assert again.engine.bandit.posterior("sad", rig.contexts()[0]) == rig.engine.bandit.posterior(
        "sad", rig.contexts()[0])
    again.close()


# -- failures ----------------------------------------------------------------------------------


def test_missing_device_retries_with_backoff_until_it_appears(tmp_path):
    clock = ManualClock()
    fake = FakeSpotify(clock).start()
    for playlist in PLAYLISTS:
        fake.add_playlist(playlist.uri, tracks=10, duration_ms=TRACK_S * 1000)
    fake.login(tmp_path)
    rig = Rig(tmp_path, fake=fake, clock=clock)
    try:
        rig.mood("sad")
        assert rig.of(ComponentState)[-1].state == "device_missing"
        rig.run(120)
        lookups = fake.count("GET", "/v1/me/player/devices")
        assert 3 <= lookups <= 6  # 5, 10, 20, 40 s apart, not every tick
        fake.add_device("moodbox")
        rig.run(100)  # the next lookup, at most 80 s (+20 % jitter) after the last
        assert len(rig.plays()) == 1 and rig.of(ComponentState)[-1].state == "ok"
    finally:
        rig.close()
        fake.stop()


def test_premium_required_is_reported_and_retried_slowly(rig):
    rig.fake.premium = False
    rig.mood("sad")
    assert rig.of(ComponentState)[-1].state == "premium_required"
    rig.run(600)
    attempts = rig.fake.count("PUT", "/v1/me/player*")  # transfer, then play: 403 each
    assert 3 <= attempts <= 8  # 5, 10, 20, ... 300 s apart
    assert rig.command("play").ok is False


def test_an_hour_long_retry_after_is_honoured_without_blocking(rig):
    rig.run(1)
    rig.fake.fail("/v1/*", 429, retry_after=3600, times=None)
    rig.mood("sad")
    assert rig.of(ComponentState)[-1].state == "rate_limited"
    sent = len(rig.fake.requests)
    result = rig.command("volume", 30)
    assert not result.ok and "try again in 3600 s" in result.error
    rig.run(1800)
    assert len(rig.fake.requests) == sent
    rig.fake.clear_faults()
    rig.run(1810)
    assert len(rig.plays()) == 1 and rig.of(ComponentState)[-1].state == "ok"


def test_revoked_login_is_reported(rig):
    rig.mood("sad")
    rig.run(5)
    rig.fake.revoke()
    rig.run(30)
    assert rig.of(ComponentState)[-1].state == "login_needed"
    assert rig.of(PlaybackState)[-1].playing is False  # not trusted to be playing


# -- the track cache --------------------------------------------------------------------------------


def test_playlists_are_cached_daily_as_csv(rig):
    rig.run(120)
    for playlist in PLAYLISTS:
        assert rig.cache.path(playlist.uri).exists()
    pages = rig.fake.count("GET", "/v1/playlists/*")
    rig.run(3600)
    assert rig.fake.count("GET", "/v1/playlists/*") == pages  # fresh for a day


def test_offline_the_cache_gives_names_and_playback_by_track_uris(tmp_path):
    rig = Rig(tmp_path)
    rig.run(120)  # online: the cache fills
    rig.close()
    blues = [t.uri for t in rig.cache.tracks(URIS["blues"])]
    # Spotify's playlist reads are unreachable now, and the blues playlist itself cannot be played.
    rig.fake.fail("/v1/playlists/*", drop=True, times=None)
    rig.fake.fail("/v1/me/player/play", 404, message="Not found.", times=1)
    again = Rig(tmp_path, fake=rig.fake, clock=rig.clock, policy="match")
    try:
        assert again.cache.track(blues[0]).name == "Blues song 1"  # names, from disk
        again.mood("sad")
        assert again.plays()[-1] == {"uris": blues}
        again.run(3)
        assert again.of(TrackStarted)[0].name == "Blues song 1"
        again.run(20)
        assert again.cache.path(URIS["blues"]).exists() and len(again.cache.tracks(URIS["blues"])) == 10
    finally:
        again.close()
        rig.fake.stop()


# -- figures ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_api_calls_per_hour_in_steady_play(rig, record_property):
    rig.fake.add_playlist(URIS["happy"], tracks=40, duration_ms=TRACK_S * 1000)  # two hours of music
    rig.run(200)  # start-up: cache filled
    rig.mood("happy")  # happy stays happy: one playlist, track after track
    rig.run(600)
    before = len(rig.fake.requests)
    rig.run(3600)
    per_hour = len(rig.fake.requests) - before
    record_property("spotify_calls_per_hour", per_hour)
    print(f"\nSpotify Web API calls in one hour of steady play: {per_hour}")
    assert len(rig.plays()) == 1
    assert per_hour <= 3600 / rig.config.poll_s + 3600 / TRACK_S + 5


def test_a_lagging_player_state_is_not_taken_for_the_new_music(rig):
    rig.mood("sad")
    rig.run(30)
    first = rig.of(TrackStarted)[0]
    # Spotify's state can show the old music for a moment after a play call
    real_serve = rig.fake.serve
    stale = {"left": 1}

    def lagging(method, path, query, body, headers):
        status, payload, extra = real_serve(method, path, query, body, headers)
        if (method, path) == ("GET", "/v1/me/player") and stale["left"] and payload:
            stale["left"] -= 1
            payload = {**payload, "context": {"uri": first.playlist_uri, "type": "playlist"},
                       "item": {**payload["item"], "uri": first.uri, "name": first.name}}
        return status, payload, extra

    assert rig.command("play", "metal").ok
    rig.fake.serve = lagging
    rig.run(10)
    assert [s.playlist for s in rig.of(TrackStarted)] == [first.playlist, "Metal"]
    assert rig.of(TrackStarted)[-1].name == "Metal song 1"
