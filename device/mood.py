"""Per-frame emotion probabilities -> one stable mood.

Pure logic: no I/O and no clock. Every reading carries its own monotonic
timestamp, so tests replay synthetic hours in milliseconds. The only clock is
the injected ``wall_clock``, and it only stamps ``MoodChanged.since`` for people
and Home Assistant; no decision ever depends on it.

The chain, per face reading:

1. Exponential smoothing with time constant ``smoothing_s``. A reading's
   weight is ``1 - exp(-dt/tau)`` where ``dt`` is the time since the previous
   reading, so irregular frame intervals weigh each reading by the time it
   stands for. The average is bias-corrected (divided by its total weight), so
   after a start or a reset it is the time-weighted mean of the readings so far
   rather than being pulled towards the first one or towards a made-up prior.
2. The smoothed top class becomes the candidate when it reaches
   ``confidence`` and, while an emotion is current, beats that emotion's
   smoothed probability by ``hysteresis``.
3. The candidate must stay on top for ``min_dwell_s``, and clear the gate and
   the margin again at that moment, before the mood switches; the first mood
   after start also waits for the dwell. Requiring the gate on every frame
   instead would let one noisy frame restart the dwell: at 30 % label noise
   that doubled the switch latency without removing a single false switch.

With no face for ``no_face_s`` the mood becomes ``no_face`` and the smoothing
starts afresh, so the next person is not judged by the last one's face.
Frames without a face neither decay nor feed the average: a face that drops
out of detection for a moment is not outvoted by its first frame back.

A user override replaces the reported mood until a timestamp (on the same
clock as the readings); the camera's mood is tracked meanwhile and reported
again when the override ends.

Not thread-safe: feed it from one thread (the daemon's main loop).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from device.config import MoodConfig
from device.events import NO_FACE, FaceReading, MoodChanged
from device.preprocess import EMOTIONS

__all__ = ["Stabiliser"]

log = logging.getLogger(__name__)

#: Readings closer together than this still count a little, so a weight is never zero.
_MIN_DT = 1e-3
#: Timestamps are sums of float steps; 5.000000001 s of dwell must count as 5 s.
_EPSILON = 1e-9


def _alpha(dt: float, tau: float) -> float:
    return 1.0 - math.exp(-max(dt, _MIN_DT) / tau)


def _checked(probabilities: Sequence[float]) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (len(EMOTIONS),):
        raise ValueError(f"expected {len(EMOTIONS)} probabilities in FER2013 order, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.sum() <= 0:
        raise ValueError(f"probabilities must be finite, non-negative and not all zero, got {p.tolist()}")
    return p / p.sum()


class Stabiliser:
    """Feed it every processed frame with :meth:`update`; it answers a MoodChanged when the mood changes."""

    def __init__(self, config: MoodConfig, wall_clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._wall_clock = wall_clock
        self._sum: np.ndarray | None = None  # weighted sum of face probabilities; None = no state
        self._weight = 0.0
        self._borrow = False  # the very first reading takes the weight of the interval after it
        self._last_ts: float | None = None
        self._last_seen: float | None = None  # last face, or the first reading of all
        self._camera: str | None = None  # the mood the camera settled on
        self._candidate: str | None = None
        self._candidate_since = 0.0
        self._override: tuple[str, float] | None = None  # mood, until (reading timestamps)
        self._reported: tuple[str, bool] | None = None  # last emitted mood and its override flag

    @property
    def mood(self) -> str | None:
        """The mood last reported (None before the first one)."""
        return self._reported[0] if self._reported else None

    @property
    def camera_mood(self) -> str | None:
        """The mood the camera settled on, whatever an override says."""
        return self._camera

    @property
    def override_until(self) -> float | None:
        return self._override[1] if self._override else None

    @property
    def probabilities(self) -> dict[str, float] | None:
        """The smoothed probabilities now, or None while there is no face to smooth."""
        estimate = self._estimate()
        return None if estimate is None else dict(zip(EMOTIONS, (float(v) for v in estimate)))

    def update(self, reading: FaceReading) -> MoodChanged | None:
        """Take one processed frame; returns the MoodChanged it caused, if any.

        A reading older than the previous one is ignored; malformed
        probabilities raise ValueError and leave the state untouched.
        """
        ts = float(reading.timestamp)
        if not math.isfinite(ts):
            raise ValueError(f"reading timestamp must be finite, got {reading.timestamp!r}")
        probs = None if reading.probabilities is None else _checked(reading.probabilities)
        if self._last_ts is not None and ts < self._last_ts:
            log.debug("ignoring a reading from %.3f, older than the last one (%.3f)", ts, self._last_ts)
            return None
        dt = None if self._last_ts is None else ts - self._last_ts
        self._last_ts = ts
        if self._last_seen is None:
            self._last_seen = ts
        if probs is not None:
            self._last_seen = ts
            self._smooth(probs, dt)
            self._track(ts)
        elif self._camera != NO_FACE and ts - self._last_seen >= self._config.no_face_s - _EPSILON:
            self._reset()
            self._camera = NO_FACE
        if self._override and ts >= self._override[1]:
            log.info("mood override %s ended", self._override[0])
            self._override = None
        return self._report()

    def override(self, mood: str, until_ts: float) -> MoodChanged | None:
        """Report ``mood`` until readings reach ``until_ts``, whatever the camera sees."""
        if mood not in EMOTIONS:
            raise ValueError(f"override mood must be one of {list(EMOTIONS)}, got {mood!r}")
        self._override = (mood, float(until_ts))
        return self._report()

    def cancel_override(self) -> MoodChanged | None:
        """End an override now; the camera's mood is reported again if it has one."""
        self._override = None
        return self._report()

    def _estimate(self) -> np.ndarray | None:
        return None if self._sum is None else self._sum / self._weight

    def _smooth(self, p: np.ndarray, dt: float | None) -> None:
        tau = self._config.smoothing_s
        if self._sum is None:
            self._borrow = dt is None
            self._weight = 1.0 if dt is None else _alpha(dt, tau)
            self._sum = p * self._weight
            return
        a = _alpha(dt if dt is not None else 0.0, tau)
        if self._borrow:
            # The first reading ever had no interval before it; give it the next one's
            # weight so it counts like any other frame instead of like the whole past.
            self._sum *= a / self._weight
            self._weight = a
            self._borrow = False
        self._sum = (1.0 - a) * self._sum + a * p
        self._weight = (1.0 - a) * self._weight + a

    def _track(self, ts: float) -> None:
        p = self._estimate()
        assert p is not None  # _smooth ran just before
        name = EMOTIONS[int(np.argmax(p))]
        if name == self._camera:
            self._candidate = None
            return
        if name != self._candidate:
            if not self._clears(p, name):
                self._candidate = None
                return
            self._candidate, self._candidate_since = name, ts
        # The candidate stays one while it stays on top; a noisy frame that dips it
        # under the gate for a moment does not restart its dwell, but it must clear
        # the gate and the margin again at the moment it takes over.
        if ts - self._candidate_since >= self._config.min_dwell_s - _EPSILON and self._clears(p, name):
            self._camera, self._candidate = name, None

    def _clears(self, p: np.ndarray, name: str) -> bool:
        """``name`` reaches the confidence gate and beats the current emotion by the margin."""
        value = p[EMOTIONS.index(name)]
        if value < self._config.confidence:
            return False
        return self._camera not in EMOTIONS or value >= p[EMOTIONS.index(self._camera)] + self._config.hysteresis

    def _reset(self) -> None:
        self._sum, self._weight, self._borrow = None, 0.0, False
        self._candidate = None

    def _report(self) -> MoodChanged | None:
        if self._override:
            mood, override = self._override[0], True
        elif self._camera is not None:
            mood, override = self._camera, False
        else:
            return None  # nothing settled yet: keep what was reported (an expired override at worst)
        if self._reported == (mood, override):
            return None
        if override:
            probabilities = {name: float(name == mood) for name in EMOTIONS}
            confidence = 1.0
        elif mood == NO_FACE:
            probabilities, confidence = {}, 0.0
        else:
            probabilities = self.probabilities or {}
            confidence = probabilities.get(mood, 0.0)
        previous = self._reported[0] if self._reported else None
        self._reported = (mood, override)
        event = MoodChanged(mood=mood, previous=previous, confidence=confidence, probabilities=probabilities,
                            since=self._wall_clock(), override=override)
        log.info("mood %s -> %s (%.2f)%s", previous, mood, confidence, " [override]" if override else "")
        return event
