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
