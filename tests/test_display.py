"""The OLED: screens against golden PNGs, the screen rule, and the output's thread, rate, burn-in care and I2C errors.

Goldens live in tests/golden/. After a deliberate change to a screen, look at
the new pictures and regenerate them with

    MOODBOX_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/test_display.py

(the update test runs first and rewrites every golden; the comparisons then pass against them).
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from luma.core.device import dummy
from PIL import Image, ImageChops

from device.bus import Bus
from device.config import Config, ConfigError, DisplayConfig, parse_config
from device.display import device as display_device
from device.display.glyphs import fonts
from device.display.render_docs import SAMPLES, faces_sheet, oled_picture
from device.display.render_docs import main as render_docs_main
from device.display.screens import (
    SCROLL_GAP,
    BootView,
    MessageView,
    MoodView,
    NowPlayingView,
    PrivacyView,
    StatusIcons,
    render,
    scrolls,
    text_width,
)
from device.display.state import (
    LINGER_S,
    MESSAGES,
    PAGE_S,
    SCROLL_DELAY_S,
    SCROLL_PX_S,
    DisplayState,
    apply,
    choose_view,
)
from device.events import (
    NO_FACE,
    CameraState,
    ComponentState,
    Feedback,
    ModelLoaded,
    MoodChanged,
    PipelineStats,
    PlaybackState,
    TrackStarted,
)
from device.outputs import OutputContext
from device.outputs.display import SHIFTS, DisplayOutput, create, default_route_up, in_night
from device.preprocess import EMOTIONS

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MOODBOX_UPDATE_GOLDEN") == "1"
#: Differing pixels allowed against a golden: FreeType builds may place a glyph pixel differently.
TOLERANCE = 12

LONG_TITLE = "Here Comes the Sun - Remastered 2009"


@functools.cache
def golden_images() -> dict[str, Image.Image]:
    """Every screen as luma's dummy device holds it after display(), plus the face sheet."""
    views = dict(SAMPLES)
    views.update({f"mood_{mood}": MoodView(mood, 0.64) for mood in EMOTIONS})
    images = {}
    for name, view in views.items():
        panel = dummy(width=128, height=64, mode="1")
        panel.display(render(view))
        images[name] = panel.image
    images["faces"] = faces_sheet()
    return images


def differing_pixels(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, f"size {a.size} != {b.size}"
    return sum(ImageChops.difference(a.convert("L"), b.convert("L")).histogram()[1:])


# --- goldens -------------------------------------------------------------------


@pytest.mark.skipif(not UPDATE, reason="set MOODBOX_UPDATE_GOLDEN=1 to rewrite tests/golden/*.png")
def test_update_goldens():
    GOLDEN.mkdir(exist_ok=True)
    for name, image in golden_images().items():
        image.save(GOLDEN / f"{name}.png")


@pytest.mark.parametrize("name", sorted(golden_images()))
def test_screen_matches_golden(name):
    path = GOLDEN / f"{name}.png"
    assert path.exists(), f"no golden {path.name}: run MOODBOX_UPDATE_GOLDEN=1 pytest tests/test_display.py"
    image = golden_images()[name]
    assert image.mode == "1"
    diff = differing_pixels(image, Image.open(path))
    assert diff <= TOLERANCE, f"{name}: {diff} pixels differ from {path}"


def test_golden_comparison_catches_a_different_screen():
    happy = golden_images()["mood_happy"]
    assert differing_pixels(happy, Image.open(GOLDEN / "mood_sad.png")) > TOLERANCE
    # One scroll step of a title is already far beyond the tolerance.
    assert differing_pixels(render(SAMPLES["now_playing"]), render(SAMPLES["now_playing_scrolled"])) > TOLERANCE


def test_rotated_panel_gets_the_picture_turned():
    panel = dummy(width=128, height=64, rotate=2, mode="1")
    image = render(SAMPLES["mood_happy"])
    panel.display(image)
    assert panel.image.tobytes() == image.rotate(180).tobytes()


def test_every_known_message_fits_without_wrapping():
    width = 126  # the right margin the burn-in shift moves into
    for (component, state), (title, hint) in MESSAGES.items():
        assert text_width(title, fonts().medium) <= width, title
        lines = hint.splitlines()
        assert len(lines) <= 3
        for line in lines:
            assert text_width(line, fonts().small) <= width, f"{component}/{state}: {line!r}"


def test_marquee_wraps_round_and_short_titles_stay_still():
    short = NowPlayingView("Clair de Lune", "Debussy")
    assert not scrolls(short)
    still = NowPlayingView("Clair de Lune", "Debussy", scroll=40)
    assert render(short).tobytes() == render(still).tobytes()
    long = NowPlayingView(LONG_TITLE, "The Beatles")
    assert scrolls(long)
    frames = {render(NowPlayingView(LONG_TITLE, "The Beatles", scroll=s)).tobytes() for s in range(0, 400, 4)}
    assert len(frames) > 20
    # A lap later the title is back where it started.
    lap = int(text_width(LONG_TITLE, fonts().medium)) + SCROLL_GAP
    start, lapped = NowPlayingView(LONG_TITLE, "x"), NowPlayingView(LONG_TITLE, "x", scroll=lap)
    assert render(lapped).tobytes() == render(start).tobytes()
    assert render(NowPlayingView(LONG_TITLE, "x", scroll=lap - 4)).tobytes() != render(start).tobytes()


@settings(max_examples=60, deadline=None)
@given(title=st.text(max_size=80), artist=st.text(max_size=80), scroll=st.integers(0, 10**6),
       confidence=st.floats(allow_nan=True, allow_infinity=True), mood_name=st.text(max_size=12))
def test_any_text_or_number_renders(title, artist, scroll, confidence, mood_name):
    # Track names come from Spotify and moods from MQTT overrides: nothing in them may stop the display.
    for view in (NowPlayingView(title, artist, title, artist, scroll=scroll), MoodView(mood_name, confidence),
                 MessageView(title, artist)):
        image = render(view)
        assert image.size == (128, 64) and image.mode == "1"


def test_render_docs_writes_every_screen(tmp_path):
    assert render_docs_main(["--out", str(tmp_path), "--scale", "3"]) == 0
    names = {p.stem for p in tmp_path.glob("*.png")}
    assert names == set(SAMPLES) | {"faces"}
    picture = Image.open(tmp_path / "mood_happy.png")
    assert picture.size == (128 * 3 + 40, 64 * 3 + 40)
    assert picture.mode == "RGB"
    # Lit pixels are pale, unlit ones near black.
    assert oled_picture(Image.new("1", (2, 2), 1), scale=4, border=0).getpixel((0, 0)) == (214, 236, 255)


# --- the screen rule -------------------------------------------------------------


def mood(name: str = "happy", confidence: float = 0.8, override: bool = False) -> MoodChanged:
    return MoodChanged(name, None, confidence, {}, 0.0, override)


def track(name: str = LONG_TITLE) -> TrackStarted:
    return TrackStarted(uri="spotify:track:1", name=name, artists="The Beatles", album="Abbey Road",
                        duration_ms=185000, playlist="Uplifting", playlist_uri="spotify:playlist:1",
                        policy="uplift", target="calm", mood="sad", started=0.0)


def playback(playing: bool, name: str = LONG_TITLE) -> PlaybackState:
    return PlaybackState(playing=playing, track=name, artists="The Beatles", album="Abbey Road",
                         playlist="Uplifting", policy="uplift", target="calm", device="moodbox", volume=60,
                         duration_ms=185000, progress_ms=0, updated=0.0)


def fold(*events, now: float = 0.0, state: DisplayState | None = None) -> DisplayState:
    state = state or DisplayState()
    for event in events:
        state = apply(state, event, now)
    return state


READY = (ModelLoaded("m.tflite", "v1", "abc", 0.6), CameraState("ok"))


def test_boot_progress_until_model_and_camera_are_up():
    view = choose_view(DisplayState(), 0.0, version="0.1.0")
    assert isinstance(view, BootView)
    assert [(s.name, s.state) for s in view.steps] == [("Model", "active"), ("Camera", "waiting")]
    state = fold(ModelLoaded("m", "v", "s", None), CameraState("starting"), ComponentState("spotify", "ok"))
    view = choose_view(state, 0.0)
    assert [(s.name, s.state) for s in view.steps] == [("Model", "done"), ("Camera", "active"), ("Spotify", "done")]
    assert view.status.camera == "pending" and view.status.spotify == "ok" and view.status.mqtt == "hidden"
    assert isinstance(choose_view(fold(CameraState("ok"), state=state), 0.0), MoodView)
    # Figures from the loop also end the boot screen (e.g. a camera that never says "ok").
    assert isinstance(choose_view(fold(PipelineStats(5, 1, 1, 1, 10, 0, False)), 0.0), MoodView)


def test_errors_win_and_take_turns_in_priority_order():
    state = fold(*READY, mood(), CameraState("off"), ComponentState("mqtt", "unreachable", error=True),
                 ComponentState("spotify", "login_needed", error=True), track())
    first, second = choose_view(state, 0.0), choose_view(state, PAGE_S)
    assert isinstance(first, MessageView) and isinstance(second, MessageView)
    assert (first.title, first.hint) == MESSAGES[("spotify", "login_needed")]
    assert second.title == "Broker unreachable"
    assert choose_view(state, 2 * PAGE_S).title == first.title
    assert first.status.spotify == "error" and first.status.camera == "off"
    # Fixed: privacy is next.
    state = fold(ComponentState("mqtt", "ok"), ComponentState("spotify", "ok"), state=state)
    assert isinstance(choose_view(state, 0.0), PrivacyView)
    assert choose_view(state, 0.0).status.mqtt == "ok"


def test_lost_camera_and_unknown_errors_say_what_to_do():
    view = choose_view(fold(*READY, CameraState("camera_lost", "no frame for 5 s")), 0.0)
    assert (view.title, view.hint) == MESSAGES[("camera", "camera_lost")]
    view = choose_view(fold(*READY, ComponentState("music", "quota", "try again tomorrow", error=True)), 0.0)
    assert (view.title, view.hint) == ("Music: quota", "try again tomorrow")


def test_refused_model_lingers_then_goes_and_a_loaded_model_clears_it():
    state = fold(*READY, mood(), ComponentState("model", "refused", "sha256 mismatch", error=True), now=100.0)
    assert choose_view(state, 100.0 + LINGER_S - 1).title == "Model refused"
    assert isinstance(choose_view(state, 100.0 + LINGER_S), MoodView)
    state = fold(ModelLoaded("new", "v2", "s", None), state=state, now=101.0)
    assert isinstance(choose_view(state, 101.0), MoodView)


def test_mood_and_now_playing_alternate_new_things_first():
    state = fold(*READY, mood("sad"), now=0.0)
    assert isinstance(choose_view(state, 50.0), MoodView)  # no track: mood only
    state = fold(track(), state=state, now=3.0)
    pages = [type(choose_view(state, 3.0 + k * PAGE_S + 1)) for k in range(4)]
    assert pages == [NowPlayingView, MoodView, NowPlayingView, MoodView]
    state = fold(mood("happy"), state=state, now=30.0)
    view = choose_view(state, 30.0)
    assert isinstance(view, MoodView) and view.mood == "happy"
    assert isinstance(choose_view(state, 30.0 + PAGE_S), NowPlayingView)


def test_now_playing_scrolls_after_a_pause_and_shows_pause():
    state = fold(*READY, track(), now=0.0)
    views = [choose_view(state, t) for t in (0.0, SCROLL_DELAY_S, SCROLL_DELAY_S + 1.0)]
    assert [v.scroll for v in views[:2]] == [0, 0]
    assert views[2].scroll == int(SCROLL_PX_S)
    assert views[0].policy == "uplift · calm" and views[0].playlist == "Uplifting"
    paused = choose_view(fold(playback(False), state=state, now=1.0), 1.0)
    assert isinstance(paused, NowPlayingView) and not paused.playing
    nothing = fold(PlaybackState(False, "", "", "", "", "", "", "moodbox", None, 0, 0, 0.0), state=state)
    assert nothing.track is None


def test_override_and_no_face_views():
    state = fold(*READY, mood("sad", 1.0, override=True))
    assert choose_view(state, 0.0) == MoodView("sad", 1.0, True, StatusIcons(camera="ok"), "")
    assert choose_view(fold(*READY, mood(NO_FACE, 0.0)), 0.0).mood == NO_FACE


def test_unknown_events_and_our_own_reports_change_nothing():
    state = fold(*READY, mood())
    for event in (object(), Feedback("like", "u", "t", "p", "happy"), ComponentState("display", "unreachable",
                                                                                       error=True)):
        assert apply(state, event, 5.0) is state


def test_network_icon_from_probe_unless_a_part_reports_it():
    state = fold(*READY)
    assert choose_view(state, 0.0, network="error").status.network == "error"
    assert choose_view(fold(ComponentState("network", "ok"), state=state), 0.0, network="error").status.network == "ok"


# --- the output ------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Panel:
    """luma's dummy device, counting calls; ``fail`` makes the next calls raise an I2C error."""

    def __init__(self) -> None:
        self.inner = dummy(width=128, height=64, mode="1")
        self.calls: list[tuple] = []
        self.fail = 0

    def _call(self, *call) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        self.calls.append(call)

    def display(self, image) -> None:
        self._call("display")
        self.inner.display(image)

    def contrast(self, level) -> None:
        self._call("contrast", level)

    def hide(self) -> None:
        self._call("hide")

    def show(self) -> None:
        self._call("show")

    def cleanup(self) -> None:
        self.calls.append(("cleanup",))

    @property
    def image(self):
        return self.inner.image

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)


class Opener:
    """Hands out the same Panel; fails while ``broken``. Counts attempts."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self.attempts = 0
        self.broken = False

    def __call__(self) -> Panel:
        self.attempts += 1
        if self.broken:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        return self.panel


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def publish(self, event: object) -> None:
        self.events.append(event)


NOON = dt.datetime(2024, 6, 1, 12, 0, 0)


def make_output(clock: Clock, wall=lambda: NOON, **settings):
    config = DisplayConfig(**{"shift_interval_s": 0, "dim_after_s": 0, **settings})
    panel = Panel()
    opener = Opener(panel)
    output = DisplayOutput(config, opener, version="0.1.0", clock=clock, wall_clock=wall, network=lambda: True)
    bus = Recorder()
    output._bus = bus  # as start() would, without the thread: tests drive step() themselves
    for event in READY:
        output.handle(event)
    return output, panel, opener, bus


def test_sends_a_frame_only_when_the_picture_changes():
    clock = Clock()
    output, panel, _, _ = make_output(clock)
    output.step()
    assert panel.count("display") == 1
    for _ in range(5):
        clock.now += 1.0
        output.step()
    assert panel.count("display") == 1
    output.handle(PipelineStats(5, 1, 1, 1, 10, 1, True))  # figures: nothing on screen changes
    clock.now += 1.0
    output.step()
    assert panel.count("display") == 1
    output.handle(mood("sad"))
    clock.now += 1.0
    output.step()
    assert panel.count("display") == 2
    wanted = MoodView("sad", 0.8, status=StatusIcons("ok", "ok"), clock="12:00")
    assert panel.image.tobytes() == render(wanted).tobytes()


def test_frame_rate_is_capped_however_fast_events_come():
    clock = Clock()
    output, panel, _, _ = make_output(clock, max_fps=4.0)
    output.step()
    sent = []
    # 2 s of a new mood every 10 ms, stepping whenever an event or the returned delay says so.
    due = clock.now
    for i in range(200):
        clock.now += 0.01
        output.handle(mood(EMOTIONS[i % 7], 0.5 + (i % 40) / 100))
        if clock.now >= due or i % 3 == 0:
            before = panel.count("display")
            due = clock.now + output.step()
            if panel.count("display") > before:
                sent.append(clock.now)
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert len(sent) >= 6
    assert min(gaps) >= 0.25 - 1e-9
    assert len(sent) <= 9  # 2 s at 4 fps, plus the first


def test_scrolling_animates_at_the_capped_rate():
    clock = Clock()
    output, panel, _, _ = make_output(clock, max_fps=2.0)
    output.handle(track())
    frames = []
    end = clock.now + 5.0
    while clock.now < end:
        delay = output.step()
        frames.append(panel.image.tobytes())
        assert delay == pytest.approx(0.5, abs=1e-6) or delay < 0.5
        clock.now += delay
    distinct = len(set(frames))
    assert panel.count("display") == distinct
    assert 6 <= distinct <= 11  # ~2 fps over the 3.5 s after the first pause


def test_i2c_error_switches_off_logs_once_and_retries_with_backoff(caplog):
    clock = Clock()
    output, panel, opener, bus = make_output(clock, max_fps=4.0)
    output._retry_s, output._retry_max_s = 2.0, 8.0
    output.step()
    panel.fail = 1
    opener.broken = True
    output.handle(mood("sad"))
    clock.now += 1.0
    with caplog.at_level(logging.DEBUG, logger="device.outputs.display"):
        delay = output.step()
        assert output.device is None and delay == 2.0
        delays = []
        for _ in range(4):
            output.handle(mood("angry"))  # events keep coming and are taken in
            clock.now += delay - 0.5
            assert output.step() == pytest.approx(0.5)  # not yet: no attempt
            clock.now += 0.5
            delay = output.step()
            delays.append(delay)
    assert delays == [4.0, 8.0, 8.0, 8.0]
    assert opener.attempts == 1 + 4  # the first open, then one per backoff
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "121" in warnings[0].getMessage()
    assert [e for e in bus.events if isinstance(e, ComponentState)] == [
        ComponentState("display", "unreachable", "[Errno 121] Remote I/O error", error=True)]
    # The panel comes back: the next attempt redraws the current screen.
    opener.broken = False
    clock.now += delay
    with caplog.at_level(logging.INFO, logger="device.outputs.display"):
        output.step()
    assert output.device is panel and output.failures == 0
    assert bus.events[-1] == ComponentState("display", "ok")
    assert "working again" in caplog.records[-1].getMessage()
    assert panel.image.tobytes() == render(MoodView("angry", 0.8, status=StatusIcons("ok", "ok"),
                                                    clock="12:00")).tobytes()


def test_dims_after_inactivity_and_brightens_on_news():
    clock = Clock()
    output, panel, _, _ = make_output(clock, dim_after_s=60.0, dim_contrast=10, contrast=200)
    output.step()
    clock.now += 59.0
    output.step()
    assert panel.count("contrast") == 0
    clock.now += 1.0
    output.step()
    assert panel.calls[-1] == ("contrast", 10)
    clock.now += 30.0
    output.step()
    assert panel.count("contrast") == 1
    output.handle(mood("surprise"))
    output.step()
    assert ("contrast", 200) in panel.calls
    assert panel.calls[-1] == ("display",)


def test_sleeps_at_night_and_wakes_in_the_morning():
    clock = Clock()
    wall = [dt.datetime(2024, 6, 1, 22, 59)]
    output, panel, _, _ = make_output(clock, wall=lambda: wall[0], night_start="23:00", night_end="07:00")
    output.step()
    assert panel.count("display") == 1
    wall[0] = dt.datetime(2024, 6, 1, 23, 0)
    clock.now += 1.0
    output.step()
    output.handle(mood("sad"))
    for _ in range(3):
        clock.now += 30.0
        output.step()
    assert panel.count("hide") == 1 and panel.count("display") == 1
    wall[0] = dt.datetime(2024, 6, 2, 7, 0)
    clock.now += 30.0
    output.step()
    assert panel.calls[-2:] == [("show",), ("display",)]


def test_night_window_may_span_midnight():
    assert in_night(dt.time(23, 30), "23:00", "07:00")
    assert in_night(dt.time(3, 0), "23:00", "07:00")
    assert not in_night(dt.time(7, 0), "23:00", "07:00")
    assert in_night(dt.time(13, 0), "12:30", "14:00")
    assert not in_night(dt.time(15, 0), "12:30", "14:00")
    assert not in_night(dt.time(23, 0), "23:00", "23:00")  # equal times: never dark


def test_picture_shifts_a_pixel_each_interval():
    clock = Clock(0.0)
    output, panel, _, _ = make_output(clock, shift_interval_s=60.0)
    view = MoodView("no_face", 0.0, status=StatusIcons("ok", "ok"), clock="12:00")
    seen = []
    for k in range(5):
        clock.now = k * 60.0 + 1.0
        output.step()
        seen.append(panel.image)
    plain = render(view)
    for k, image in enumerate(seen):
        expected = Image.new("1", plain.size)
        expected.paste(plain, SHIFTS[k % 4])
        assert image.tobytes() == expected.tobytes(), f"interval {k}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_screens_leave_the_shift_margin_free(name):
    # The shift moves the picture 1 px right and down: nothing may fall off the edge.
    image = render(SAMPLES[name])
    assert image.crop((126, 0, 128, 64)).getbbox() is None and image.crop((0, 63, 128, 64)).getbbox() is None


def test_threaded_output_on_a_real_bus_never_blocks_it():
    config = DisplayConfig(shift_interval_s=0, max_fps=10.0)
    panel = Panel()
    opener = Opener(panel)
    output = DisplayOutput(config, opener, wall_clock=lambda: NOON, network=lambda: True, retry_s=0.05,
                           retry_max_s=0.05)
    bus = Bus()
    bus.attach(output)
    try:
        for event in (*READY, mood("fear", 0.9)):
            bus.publish(event)
        wanted = render(MoodView("fear", 0.9, status=StatusIcons("ok", "ok"), clock="12:00")).tobytes()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (panel.image is None or panel.image.tobytes() != wanted):
            time.sleep(0.02)
        assert panel.image is not None and panel.image.tobytes() == wanted
        # The panel breaks: publishing goes on, the thread lives and keeps retrying.
        panel.fail = 1
        opener.broken = True
        for i in range(200):
            bus.publish(mood(EMOTIONS[i % 7]))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and opener.attempts < 3:
            time.sleep(0.02)
        assert opener.attempts >= 3
        assert output._thread.is_alive()
    finally:
        bus.stop()
    assert not output._thread.is_alive()


def test_stop_blanks_the_panel():
    output, panel, _, _ = make_output(Clock())
    output.step()
    output.stop()
    assert panel.calls[-1] == ("cleanup",) and output.device is None


# --- devices and wiring -------------------------------------------------------------


class FakeSMBus:
    """An smbus2.SMBus stand-in: records what luma writes; ``answer`` False makes the chip vanish."""

    def __init__(self) -> None:
        self.answer = True
        self.writes: list[tuple[int, int, list[int]]] = []

    def write_quick(self, address: int) -> None:
        if not self.answer:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")

    def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
        if not self.answer:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        self.writes.append((address, register, list(data)))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("driver", ["ssd1306", "sh1106"])
def test_i2c_panel_initialises_the_same_driver_again_after_an_error(driver):
    bus = FakeSMBus()
    config = DisplayConfig(driver=driver, address=0x3D, contrast=123)
    panel = display_device.I2CPanel(config, bus=bus)
    output = DisplayOutput(config.model_copy(update={"shift_interval_s": 0.0}), panel, clock=Clock(),
                           wall_clock=lambda: NOON, network=lambda: True)
    output.step()
    first = panel.driver
    commands = [w for w in bus.writes if w[1] == 0x00]
    assert commands and all(address == 0x3D for address, _, _ in bus.writes)
    assert [0x81, 123] in [w[2] for w in commands]  # SETCONTRAST from the config
    assert sum(1 for w in bus.writes if w[1] == 0x40) > 0  # the frame went out as data
    bus.answer = False
    output.handle(mood("sad"))
    output._clock.now += 1.0
    output.step()
    assert output.device is None
    bus.answer = True
    bus.writes.clear()
    output._clock.now += 10.0
    output.step()
    assert panel.driver is first  # the same object, its init sequence sent again
    assert bus.writes[0][1] == 0x00 and 0xAE in bus.writes[0][2]  # DISPLAYOFF starts the init sequence


def test_missing_i2c_bus_is_a_logged_device_error(caplog):
    config = DisplayConfig(driver="ssd1306", i2c_port=31)
    output = DisplayOutput(config, display_device.opener(config, Path(".")), clock=Clock(), wall_clock=lambda: NOON,
                           network=lambda: True)
    with caplog.at_level(logging.WARNING, logger="device.outputs.display"):
        delay = output.step()
    assert output.device is None and delay == 5.0
    assert "raspi-config nonint do_i2c 0" in caplog.text


def test_create_respects_enabled_and_demo_writes_emulator_frames(tmp_path):
    context = OutputContext(state_dir=tmp_path, demo=True, version="9.9")
    off = Config().model_copy(update={"display": DisplayConfig(enabled=False)})
    assert create(off, context) is None
    frames = tmp_path / "frames"
    # How the demo points the frames at its --out folder.
    config = Config().model_copy(update={"display": DisplayConfig(emulator_dir=str(frames))})
    output = create(config, context)
    assert output.config.driver == "emulator" and output.name == "display" and output.commands == frozenset()
    assert not in_night(dt.time(2, 0), output.config.night_start, output.config.night_end)
    output._clock = Clock()
    output.step()
    written = sorted(frames.glob("oled_*.png"))
    assert [p.name for p in written] == ["oled_000001.png"]
    assert Image.open(written[0]).size == (256, 128)
    output.stop()


def test_dummy_driver_from_config_draws_in_memory():
    config = DisplayConfig(driver="dummy", rotation=2)
    device = display_device.opener(config, Path("."))()
    device.display(render(SAMPLES["privacy"]))
    assert device.image.tobytes() == render(SAMPLES["privacy"]).rotate(180).tobytes()


def test_default_route_probe(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway\nwlan0\t0000A8C0\t00000000\n")
    assert not default_route_up(table)
    table.write_text("Iface\tDestination\tGateway\nwlan0\t00000000\t0100A8C0\nwlan0\t0000A8C0\t00000000\n")
    assert default_route_up(table)
    assert not default_route_up(tmp_path / "missing")


@pytest.mark.parametrize("line, problem", [
    ("address = 0x3E", "must be 0x3C or 0x3D"),
    ('address = "0x3Z"', "must be 0x3C or 0x3D"),
    ("rotation = 1", "portrait"),
    ('night_end = "7:00"', "HH:MM"),
    ("dim_contrast = 250", "contrast (200)"),
    ("contrast = 256", "less than or equal to 255"),
])
def test_display_config_is_validated(line, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[display]\n{line}\n")
    assert problem in str(caught.value) and "display." in str(caught.value)


def test_display_address_accepts_hex_text():
    assert parse_config('[display]\naddress = "0x3D"\n').display.address == 0x3D
    assert parse_config("[display]\naddress = 0x3D\n").display.address == 0x3D
