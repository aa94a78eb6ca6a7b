"""The music output on a real Bus: its thread, its commands, and a camera loop that Spotify cannot stall."""

from __future__ import annotations

import threading
import time

import pytest

from device.bus import Bus
from device.config import Config, MusicConfig
from device.events import (
    Command,
    CommandResult,
    ComponentState,
    FaceReading,
    MoodChanged,
    PlaybackState,
    TrackStarted,
)
from device.outputs import OutputContext
from device.outputs.music import MusicOutput, create
from fake_spotify import FakeSpotify
from recorder import WAIT_S, Recorder
from test_music_engine import PLAYLISTS, TRACK_S

class CameraLoop(threading.Thread):
    """Publishes a frame's FaceReading at ``fps``, as the daemon's main loop does."""

    def __init__(self, bus: Bus, frames: int, fps: float = 5.0) -> None:
        super().__init__(name="camera", daemon=True)
        self.bus, self.frames, self.period = bus, frames, 1.0 / fps
        self.published = 0

    def run(self) -> None:
        for _ in range(self.frames):
            self.bus.publish(FaceReading(time.monotonic(), (10, 10, 48, 48), (0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)))
            self.published += 1
            time.sleep(self.period)


def _config(tmp_path, fake: FakeSpotify | None = None, enabled: bool = True, **spotify_keys) -> Config:
    base = Config()
    spotify = fake.spotify_config(**spotify_keys) if fake else base.spotify.model_copy(update={"enabled": enabled})
    return base.model_copy(update={
        "spotify": spotify, "music": MusicConfig(playlists=PLAYLISTS),
        "state": base.state.model_copy(update={"dir": str(tmp_path)}),
    })


def _mood(mood: str) -> MoodChanged:
    return MoodChanged(mood, None, 0.9, {}, time.time())


def test_a_held_request_and_a_429_storm_never_block_the_camera_loop(tmp_path):
    with FakeSpotify() as fake:
        for playlist in PLAYLISTS:
            fake.add_playlist(playlist.uri, tracks=5, duration_ms=TRACK_S * 1000)
        fake.add_device("moodbox")
        fake.login(tmp_path)
        gate = threading.Event()
        stuck = fake.fail("/v1/*", gate=gate)  # the music thread's first request hangs until released
        fake.fail("/v1/*", 429, retry_after=1, times=3)  # then a 429 storm
        bus, recorder = Bus(), Recorder()
        bus.attach(recorder)
        # A long request timeout: the held request must still be waiting when the camera is done.
        output = create(_config(tmp_path, fake, timeout_s=60), OutputContext(state_dir=tmp_path))
        bus.attach(output)
        try:
            assert stuck.held.wait(WAIT_S)  # music's thread is inside an HTTP request now
            camera = CameraLoop(bus, frames=25)
            camera.start()
            bus.publish(_mood("sad"))
            volume = Command("volume", 40, transaction="t1")
            bus.publish(volume)
            camera.join(WAIT_S)
            assert not camera.is_alive() and camera.published == 25
            assert not gate.is_set()  # every frame went out while music was stuck on Spotify
            assert not [r for r in recorder.of(CommandResult) if r.command == volume]  # answered later
            gate.set()

            storm_camera = CameraLoop(bus, frames=15)
            storm_camera.start()
            recorder.wait_for(lambda r: any(isinstance(e, TrackStarted) for e in r.events))
            storm_camera.join(WAIT_S)
            assert not storm_camera.is_alive() and storm_camera.published == 15
        finally:
            bus.stop(timeout=5.0)

        states = [e.state for e in recorder.of(ComponentState)]
        assert "rate_limited" in states and states[-1] == "ok"
        assert [r.command for r in recorder.of(CommandResult)] == [volume]
        limited = [r for r in fake.requests if r.path.startswith("/v1/")]
        first_429 = next(i for i, r in enumerate(limited) if r.status == 429)
        for before, after in zip(limited[first_429:], limited[first_429 + 1:first_429 + 4]):
            assert before.status != 429 or after.at - before.at >= 0.95  # Retry-After honoured, no hammering
        assert fake.count("PUT", "/v1/me/player/play") == 1


def test_disabled_spotify_means_no_music_output(tmp_path):
    assert create(_config(tmp_path, enabled=False), OutputContext(state_dir=tmp_path)) is None


@pytest.fixture
def demo(tmp_path):
    bus, recorder = Bus(), Recorder()
    bus.attach(recorder)
    output = create(_config(tmp_path, enabled=False), OutputContext(state_dir=tmp_path, demo=True))
    assert isinstance(output, MusicOutput) and output.name == "music"
    bus.attach(output)
    yield bus, recorder
    bus.stop(timeout=5.0)


def test_demo_plays_on_the_dry_run_player(demo):
    bus, recorder = demo
    bus.publish(_mood("sad"))
    recorder.wait_for(lambda r: any(isinstance(e, PlaybackState) and e.playing for e in r.events))
    (started,) = recorder.of(TrackStarted)
    assert started.playlist in ("Uplift", "Feelgood") and started.name == f"{started.playlist} 1"
    shown = [e for e in recorder.of(PlaybackState) if e.playing][-1]
    assert shown.device == "dry-run" and shown.target == "uplifting"


def test_commands_are_answered_on_the_bus(demo):
    bus, recorder = demo
    bus.publish(_mood("happy"))
    recorder.wait_for(lambda r: any(isinstance(e, TrackStarted) for e in r.events))
    sent = [Command("volume", 150, "a"), Command("feedback", "like", "c"), Command("pause", None, "d"),
            Command("policy", "match", "b"), Command("camera", False, "e")]
    for command in sent:
        bus.publish(command)
    recorder.wait_for(lambda r: len(r.of(CommandResult)) == 4)
    results = {r.command.transaction: r for r in recorder.of(CommandResult)}
    assert not results["a"].ok and "0 to 100" in results["a"].error
    assert results["b"].ok and results["b"].data == {"policy": "match"}
    assert results["c"].ok and results["d"].ok
    assert "e" not in results  # the daemon owns "camera"


def test_a_broken_state_dir_disables_music_not_the_box(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    bus, recorder = Bus(), Recorder()
    bus.attach(recorder)
    bus.attach(create(_config(tmp_path, enabled=False), OutputContext(state_dir=blocker, demo=True)))
    try:
        recorder.wait_for(lambda r: any(isinstance(e, ComponentState) and e.error for e in r.events))
        bus.publish(Command("play", None, "x"))
        recorder.wait_for(lambda r: bool(r.of(CommandResult)))
        (result,) = recorder.of(CommandResult)
        assert not result.ok and "music is unavailable" in result.error
    finally:
        bus.stop(timeout=5.0)
