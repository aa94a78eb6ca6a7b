"""Everything that travels on the bus, as frozen dataclasses.

Events flow one way: camera -> faces -> emotion -> mood -> outputs. Commands
from outside (MQTT, CLI) travel the same bus as :class:`Command` and are
answered by exactly one owner with a :class:`CommandResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Box",
    "CameraState",
    "Command",
    "CommandResult",
    "ComponentState",
    "FaceReading",
    "ModelLoaded",
    "MoodChanged",
    "NO_FACE",
    "PipelineStats",
    "Shutdown",
    "Feedback",
    "PlaybackState",
    "TrackFinished",
    "TrackStarted",
]

#: The mood reported when nobody has been in view for a while.
NO_FACE = "no_face"

Box = tuple[int, int, int, int]  # x, y, w, h in full-frame pixels


@dataclass(frozen=True)
class FaceReading:
    """One processed frame: the face found (if any) and its 7 probabilities."""

    timestamp: float  # the frame's monotonic capture time, seconds
    box: Box | None
    probabilities: tuple[float, ...] | None  # FER2013 order, see device.preprocess.EMOTIONS


@dataclass(frozen=True)
class MoodChanged:
    """The stabiliser settled on a new mood."""

    mood: str  # an EMOTIONS name or NO_FACE
    previous: str | None
    confidence: float  # smoothed probability of ``mood`` (0 for no_face)
    probabilities: dict[str, float]
    since: float  # wall-clock (epoch) seconds when the mood became stable
    override: bool = False  # set by a user's mood override, not seen by the camera


@dataclass(frozen=True)
class PipelineStats:
    """Rolling figures from the main loop, published every few seconds."""

    fps: float
    capture_ms: float
    detect_ms: float
    classify_ms: float
    frames: int
    faces: int
    face_present: bool
    probabilities: dict[str, float] | None = None  # latest smoothed probabilities


@dataclass(frozen=True)
class CameraState:
    state: str  # "starting", "ok", "camera_lost", "off" (privacy)
    detail: str = ""


@dataclass(frozen=True)
class ComponentState:
    """Health of a part of the box (spotify, mqtt, display, model, camera), for screens and HA."""

    component: str
    state: str  # e.g. "ok", "login_needed", "premium_required", "device_missing", "unreachable"
    detail: str = ""
    error: bool = False


@dataclass(frozen=True)
class ModelLoaded:
    path: str
    version: str
    sha256: str
    accuracy: float | None  # PrivateTest accuracy from the model's metadata


@dataclass(frozen=True)
class Command:
    """A validated request from outside: ``value`` is already typed and in range."""

    name: str
    value: Any = None
    transaction: str | None = None
    source: str = "local"


@dataclass(frozen=True)
class CommandResult:
    command: Command
    ok: bool
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Shutdown:
    """The daemon is stopping; outputs flush and say goodbye."""

    reason: str = "stop"


@dataclass(frozen=True)
class TrackStarted:
    """A track began on the Spotify device, as read back from the player (not assumed)."""

    uri: str
    name: str
    artists: str
    album: str
    duration_ms: int
    playlist: str  # our playlist's name; "" when the music is not one of ours
    playlist_uri: str
    policy: str  # uplift, match, iso, off, or "user" for a playlist the user asked for
    target: str  # the policy's target, e.g. "calm", "iso sad 2/3"
    mood: str  # the stable mood when it began
    started: float  # wall-clock (epoch) seconds


@dataclass(frozen=True)
class TrackFinished:
    """A track ended (or was skipped or paused); the moods tell whether it helped."""

    uri: str
    name: str
    playlist_uri: str
    mood_before: str
    mood_during: str  # the mood seen longest while it played
    mood_after: str
    improved: bool | None  # None: not judged (skipped, paused, nobody there)
    completed: bool  # played to its end
    feedback: str | None  # "like" or "skip" from the user
    played_s: float


@dataclass(frozen=True)
class PlaybackState:
    """Now playing, published when it changes: for the display and Home Assistant."""

    playing: bool
    track: str
    artists: str
    album: str
    playlist: str
    policy: str
    target: str
    device: str
    volume: int | None
    duration_ms: int
    progress_ms: int  # at ``updated``
    updated: float  # wall-clock (epoch) seconds


@dataclass(frozen=True)
class Feedback:
    """A like or skip for the current track, from MQTT or a button."""

    value: str  # "like" or "skip"
    track_uri: str
    track: str
    playlist_uri: str
    mood: str
    source: str = "local"
