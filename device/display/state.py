"""What the OLED should show: events folded into a small state, and the rule that picks a screen.

Pure functions of (state, event, time): no threads, devices or clocks, so the
screen rule is tested by feeding events and times.

The rule, first match wins:

1. **Errors that need the user** (camera lost, model refused, Spotify login
   or Premium, speaker missing, MQTT unreachable or refused), several taking
   turns every ``PAGE_S``. A refused model only lingers ``LINGER_S``: the
   old model keeps working, so it is news, not a standing fault.
2. **Privacy**: the camera is switched off.
3. **Boot progress** until the model is loaded and the camera delivers.
4. **Mood**, alternating every ``PAGE_S`` with **now playing** while a
   track is loaded. A new mood shows the mood page first, a new track the
   now-playing page first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from device.display.glyphs import IconState
from device.display.screens import (
    BootStep,
    BootView,
    MessageView,
    MoodView,
    NowPlayingView,
    PrivacyView,
    StatusIcons,
    View,
)
from device.events import (
    NO_FACE,
    CameraState,
    ComponentState,
    ModelLoaded,
    MoodChanged,
    PipelineStats,
    PlaybackState,
    TrackStarted,
)

__all__ = [
    "LINGER_S",
    "MESSAGES",
    "PAGE_S",
    "SCROLL_DELAY_S",
    "SCROLL_PX_S",
    "DisplayState",
    "Health",
    "Track",
    "apply",
    "choose_view",
    "message_for",
]

#: Seconds each page shows before the next one takes its turn.
PAGE_S = 10.0
#: Seconds a one-off error (see _TRANSIENT) stays on screen.
LINGER_S = 60.0
#: A long title rests this long before it starts to scroll, s.
SCROLL_DELAY_S = 1.5
#: Scrolling speed, px/s; the frame rate cap decides how smooth it looks.
SCROLL_PX_S = 20.0

#: (component, state) -> (title, what to do). Each hint line fits the screen: a test checks.
MESSAGES = {
    ("camera", "camera_lost"): ("No camera found", "Check the camera cable\nRun: moodbox doctor"),
    ("model", "refused"): ("Model refused", "Still using the old one.\nRun: moodbox doctor"),
    ("spotify", "login_needed"): ("Spotify login needed", "Run on the box:\nmoodbox spotify login"),
    ("spotify", "premium_required"): ("Premium needed", "Playing on speakers\nneeds Spotify Premium."),
    ("spotify", "device_missing"): ("Speaker not found", "Turn on the speaker set\nin [spotify] device_name"),
    ("mqtt", "unreachable"): ("Broker unreachable", "Check [mqtt] host, port.\nRun: moodbox doctor"),
    ("mqtt", "auth_failed"): ("MQTT login refused", "Check [mqtt] username\nand the password."),
}
_TRANSIENT = {("model", "refused")}
#: Which error shows first when several are active: the ones that stop moods, then music, then reporting.
_PRIORITY = ("camera", "model", "spotify", "mqtt")
_PENDING = {"starting", "connecting"}
_OFF = {"off", "disabled"}


@dataclass(frozen=True)
class Health:
    """The latest state a part of the box reported."""

    state: str
    detail: str = ""
    error: bool = False
    since: float = 0.0  # monotonic time it entered this state


@dataclass(frozen=True)
class Track:
    title: str
    artist: str
    playlist: str = ""
    policy: str = ""  # the policy and its target, as shown: "uplift · calm"
    playing: bool = True


@dataclass(frozen=True)
class DisplayState:
    mood: MoodChanged | None = None
    track: Track | None = None
    parts: dict[str, Health] = field(default_factory=dict)  # replaced, never mutated
    model_loaded: bool = False
    running: bool = False  # the loop has produced figures or a mood
    activity: float = 0.0  # monotonic time of the last change a person would notice (for dimming)
    page_anchor: float = 0.0  # the mood/now-playing alternation counts pages from here


def _policy_line(policy: str, target: str) -> str:
    return " · ".join(part for part in (policy, target) if part)


def _with_track(state: DisplayState, track: Track | None, now: float) -> DisplayState:
    if track == state.track:
        return state
    if track is not None and (state.track is None or track.title != state.track.title):
        # A new track shows its page first: start the alternation one page back.
        return replace(state, track=track, activity=now, page_anchor=now - PAGE_S)
    return replace(state, track=track, activity=now)


def _with_health(state: DisplayState, component: str, health: Health, now: float) -> DisplayState:
    old = state.parts.get(component)
    if old is not None and (old.state, old.detail, old.error) == (health.state, health.detail, health.error):
        return state
    since = old.since if old is not None and old.state == health.state else now
    parts = {**state.parts, component: replace(health, since=since)}
    return replace(state, parts=parts, activity=now)


def apply(state: DisplayState, event: object, now: float) -> DisplayState:
    """``state`` after ``event`` at monotonic time ``now``; unknown events change nothing."""
    if isinstance(event, MoodChanged):
        return replace(state, mood=event, running=True, activity=now, page_anchor=now)
    if isinstance(event, PipelineStats):
        return state if state.running else replace(state, running=True)
    if isinstance(event, CameraState):
        return _with_health(state, "camera", Health(event.state, event.detail, event.state == "camera_lost"), now)
    if isinstance(event, ComponentState):
        if event.component == "display":  # our own reports: nothing to show on ourselves
            return state
        return _with_health(state, event.component, Health(event.state, event.detail, event.error), now)
    if isinstance(event, TrackStarted):
        return _with_track(state, Track(event.name, event.artists, event.playlist,
                                        _policy_line(event.policy, event.target)), now)
    if isinstance(event, PlaybackState):
        track = Track(event.track, event.artists, event.playlist, _policy_line(event.policy, event.target),
                      event.playing) if event.track else None
        return _with_track(state, track, now)
    if isinstance(event, ModelLoaded):
        # A model that loads clears an earlier refusal.
        state = replace(state, model_loaded=True, activity=now)
        return _with_health(state, "model", Health("ok"), now)
    return state


def message_for(component: str, state: str, detail: str = "") -> tuple[str, str]:
    """The (title, what to do) of an error screen; unknown errors fall back to their detail."""
    known = MESSAGES.get((component, state))
    if known is not None:
        return known
    return f"{component.capitalize()}: {state.replace('_', ' ')}", detail or "Run: moodbox doctor"


def _icon(health: Health | None) -> IconState:
    if health is None:
        return "hidden"
    if health.error:
        return "error"
    if health.state in _OFF:
        return "off"
    if health.state in _PENDING:
        return "pending"
    return "ok"


def _errors(state: DisplayState, now: float) -> list[tuple[str, Health]]:
    active = [
        (name, health) for name, health in state.parts.items()
        if health.error and not ((name, health.state) in _TRANSIENT and now - health.since >= LINGER_S)
    ]
    rank = {name: i for i, name in enumerate(_PRIORITY)}
    return sorted(active, key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _booting(state: DisplayState) -> bool:
    camera = state.parts.get("camera")
    return not state.running and not (state.model_loaded and camera is not None and camera.state == "ok")


def _boot_view(state: DisplayState, status: StatusIcons, clock: str, version: str) -> BootView:
    camera = state.parts.get("camera")
    camera_step = "waiting" if camera is None else {"ok": "done", "camera_lost": "failed"}.get(camera.state, "active")
    steps = [BootStep("Model", "done" if state.model_loaded else "active"), BootStep("Camera", camera_step)]
    # Music and MQTT only appear once they report: either may be switched off.
    for name, label in (("spotify", "Spotify"), ("mqtt", "MQTT")):
        health = state.parts.get(name)
        if health is not None:
            steps.append(BootStep(label, "failed" if health.error else
                                  "active" if health.state in _PENDING else "done"))
    return BootView(tuple(steps), version, status, clock)


def choose_view(state: DisplayState, now: float, clock: str = "", network: IconState = "hidden",
                version: str = "") -> View:
    """The screen to show at monotonic time ``now``; see the module docstring for the rule.

    ``network`` is the network icon when no part reports a "network" state.
    """
    parts = state.parts
    status = StatusIcons(
        camera=_icon(parts.get("camera")),
        network=_icon(parts["network"]) if "network" in parts else network,
        mqtt=_icon(parts.get("mqtt")),
        spotify=_icon(parts.get("spotify")),
    )
    page = int(now // PAGE_S)
    errors = _errors(state, now)
    if errors:
        name, health = errors[page % len(errors)]
        title, hint = message_for(name, health.state, health.detail)
        return MessageView(title, hint, status, clock)
    camera = parts.get("camera")
    if camera is not None and camera.state == "off":
        return PrivacyView(status, clock)
    if _booting(state):
        return _boot_view(state, status, clock, version)
    mood = state.mood
    mood_view = MoodView(mood.mood if mood else NO_FACE, mood.confidence if mood else 0.0,
                         mood.override if mood else False, status, clock)
    track = state.track
    if track is None:
        return mood_view
    elapsed = max(0.0, now - state.page_anchor)
    if mood is not None and int(elapsed // PAGE_S) % 2 == 0:
        return mood_view
    shown_for = elapsed % PAGE_S  # the title starts from its beginning on every page turn
    scroll = int(max(0.0, shown_for - SCROLL_DELAY_S) * SCROLL_PX_S)
    return NowPlayingView(track.title, track.artist, track.playlist, track.policy, track.playing, scroll,
                          status, clock)
