"""Mood x policy -> target music, and which playlists fit a target. Pure: no I/O.

Music and moods share one plane: valence (pleasant vs unpleasant) and arousal
(energetic vs calm), each in [-1, 1]. Moods sit at their circumplex
coordinates; playlists carry the valence and arousal the user tagged them with
(Spotify's audio features are closed to new apps, so they cannot be looked up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from device.config import PlaylistConfig
from device.events import NO_FACE

__all__ = [
    "CIRCUMPLEX",
    "POLICIES",
    "UPLIFT",
    "Target",
    "candidates",
    "improved",
    "iso_path",
    "target_for",
    "valence",
]

#: Pleasure/arousal of the 7 moods (Russell's circumplex, as the issue gives them).
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "angry": (-0.51, 0.59),
    "disgust": (-0.60, 0.35),
    "fear": (-0.64, 0.60),
    "happy": (0.81, 0.51),
    "sad": (-0.63, -0.27),
    "surprise": (0.40, 0.67),
    "neutral": (0.00, 0.00),
}

POLICIES = ("uplift", "match", "iso", "off")

#: The therapy policy: where music should lead each mood. Surprise is short-lived and
#: ambiguous (often fear in FER2013), so it gets the everyday mix like neutral.
UPLIFT: dict[str, tuple[str, float, float]] = {
    "angry": ("calm", 0.40, -0.50),
    "disgust": ("calm", 0.40, -0.50),
    "fear": ("calm", 0.40, -0.50),
    "sad": ("uplifting", 0.70, 0.50),
    "happy": ("keep happy", 0.81, 0.51),
    "surprise": ("everyday", 0.30, 0.10),
    "neutral": ("everyday", 0.30, 0.10),
}

#: Playlists this much farther from a target than the nearest one still compete for it.
NEAR = 0.35


@dataclass(frozen=True)
class Target:
    """Where the music should be: a point in the valence/arousal plane."""

    policy: str
    mood: str
    label: str
    valence: float
    arousal: float
    tagged: bool = False  # candidates are the playlists tagged with ``mood`` (uplift's own choice)
    step: int = 0  # iso: index on the path, 0 = matching the mood
    steps: int = 1

    @property
    def key(self) -> tuple[float, float, bool]:
        """Two moods with equal keys want the same music: switching between them restarts nothing."""
        return (round(self.valence, 2), round(self.arousal, 2), self.tagged)

    @property
    def final(self) -> bool:
        return self.step >= self.steps - 1


def valence(mood: str) -> float | None:
    """The mood's pleasure coordinate; None for no_face and unknown moods."""
    point = CIRCUMPLEX.get(mood)
    return point[0] if point else None


def _uplift(mood: str, policy: str = "uplift") -> Target:
    label, v, a = UPLIFT[mood]
    return Target(policy, mood, label, v, a, tagged=True)


def iso_path(mood: str, tracks: int) -> list[Target]:
    """The iso principle: from music matching ``mood`` to its uplift target, one target per track.

    A mood already at its target (happy) needs no path: one step, the target itself.
    """
    goal = _uplift(mood, "iso")
    start_v, start_a = CIRCUMPLEX[mood]
    if math.dist((start_v, start_a), (goal.valence, goal.arousal)) < 0.05:
        return [Target("iso", mood, f"iso {mood} 1/1", goal.valence, goal.arousal, tagged=True)]
    path = []
    for step in range(tracks - 1):
        fraction = step / (tracks - 1)
        v = start_v + (goal.valence - start_v) * fraction
        a = start_a + (goal.arousal - start_a) * fraction
        path.append(Target("iso", mood, f"iso {mood} {step + 1}/{tracks}", v, a, step=step, steps=tracks))
    path.append(Target("iso", mood, f"iso {mood} {tracks}/{tracks}", goal.valence, goal.arousal,
                       tagged=True, step=tracks - 1, steps=tracks))
    return path


def target_for(policy: str, mood: str, *, step: int = 0, iso_tracks: int = 3) -> Target | None:
    """The music ``policy`` wants for ``mood``; None when it wants none (off, no_face, unknown)."""
    if policy == "off" or mood == NO_FACE or mood not in CIRCUMPLEX:
        return None
    if policy == "uplift":
        return _uplift(mood)
    if policy == "match":
        v, a = CIRCUMPLEX[mood]
        return Target("match", mood, f"match {mood}", v, a)
    if policy == "iso":
        path = iso_path(mood, iso_tracks)
        return path[min(step, len(path) - 1)]
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


def candidates(target: Target, playlists: Sequence[PlaylistConfig]) -> list[PlaylistConfig]:
    """The playlists that fit ``target``, in config order.

    A tagged target takes the playlists the user listed for the mood. Otherwise,
    or when none is listed, the playlists nearest the target's point compete.
    """
    if not playlists:
        return []
    if target.tagged:
        tagged = [p for p in playlists if target.mood in p.moods]
        if tagged:
            return tagged
    distance = {p.uri: math.dist((p.valence, p.arousal), (target.valence, target.arousal)) for p in playlists}
    nearest = min(distance.values())
    return [p for p in playlists if distance[p.uri] <= nearest + NEAR]


def improved(before: str, after: str) -> bool | None:
    """Did the mood get better over a track? None when either end is unknown (no_face).

    Better means more pleasant. Staying put counts as success only where the
    mood was already fine (happy, neutral, surprise): keeping it going is the goal there.
    """
    v_before, v_after = valence(before), valence(after)
    if v_before is None or v_after is None:
        return None
    if before == after:
        return v_before >= 0
    return v_after > v_before
