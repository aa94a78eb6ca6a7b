"""The stabiliser on synthetic sequences: latency, flicker under label noise, no_face, overrides, timing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.config import MoodConfig
from device.events import NO_FACE, FaceReading, MoodChanged
from device.mood import Stabiliser
from device.preprocess import EMOTIONS

CONFIG = MoodConfig()  # the shipped defaults: tau 2.5 s, gate 0.5, margin 0.1, dwell 5 s, no_face 10 s
FPS = 5.0
BOX = (10, 10, 40, 40)
#: With label noise the smoothed true class hovers near the gate, so single switches can
#: take a few extra time constants; the typical one is held to what a clean switch gets.
TYPICAL_LATENCY_BOUND = CONFIG.min_dwell_s + 3 * CONFIG.smoothing_s


class FakeWallClock:
    """Counts calls, to show the wall clock only stamps events."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return 1_700_000_000.0 + self.calls


def peaked(label: int, rng: np.random.Generator, strength: float = 3.0) -> tuple[float, ...]:
    """A classifier-like output: noisy logits with ``label`` ahead (about 0.74 on it on average)."""
    logits = rng.normal(0.0, 0.5, len(EMOTIONS))
    logits[label] += strength
    p = np.exp(logits - logits.max())
    return tuple(p / p.sum())


def constant(probs: dict[str, float]) -> tuple[float, ...]:
    return tuple(probs.get(name, 0.0) for name in EMOTIONS)


def face(ts: float, probs: tuple[float, ...]) -> FaceReading:
    return FaceReading(timestamp=ts, box=BOX, probabilities=probs)


def nobody(ts: float) -> FaceReading:
    return FaceReading(timestamp=ts, box=None, probabilities=None)


def noisy_schedule(segments: list[tuple[int, float]], noise: float, rng: np.random.Generator,
                   times: np.ndarray | None = None) -> list[tuple[FaceReading, int]]:
    """(reading, true label) for consecutive segments of (label, seconds) at FPS (or at ``times``).

    With probability ``noise`` a frame's peak is on a uniformly chosen wrong class.
    """
    total = sum(seconds for _, seconds in segments)
    if times is None:
        times = np.arange(0.0, total, 1.0 / FPS)
    bounds = np.cumsum([seconds for _, seconds in segments])
    out = []
    for ts in times:
        true = segments[int(np.searchsorted(bounds, ts, side="right"))][0]
        shown = true
        if rng.random() < noise:
            shown = int(rng.choice([k for k in range(len(EMOTIONS)) if k != true]))
        out.append((face(float(ts), peaked(shown, rng)), true))
    return out


def random_segments(n: int, seconds: float, rng: np.random.Generator) -> list[tuple[int, float]]:
    """``n`` segments, each a different class from the one before."""
    labels = [int(rng.integers(0, len(EMOTIONS)))]
    while len(labels) < n:
        labels.append((labels[-1] + int(rng.integers(1, len(EMOTIONS)))) % len(EMOTIONS))
    return [(label, seconds) for label in labels]


def run(stabiliser: Stabiliser, readings) -> list[tuple[float, MoodChanged]]:
    events = []
    for reading in readings:
        event = stabiliser.update(reading)
        if event is not None:
            events.append((reading.timestamp, event))
    return events


def switch_stats(segments: list[tuple[int, float]], events: list[tuple[float, MoodChanged]]):
    """Latency of each segment's switch, and the number of reported moods that were never true."""
    starts = np.concatenate([[0.0], np.cumsum([s for _, s in segments])[:-1]])
    latencies, false = [], 0
    for ts, event in events:
        index = int(np.searchsorted(starts, ts, side="right")) - 1
        label = segments[index][0]
        if event.mood == EMOTIONS[label]:
            latencies.append(ts - starts[index])
        else:
            false += 1
    return latencies, false


def test_first_mood_waits_for_the_dwell_and_uses_the_injected_wall_clock():
    clock = FakeWallClock()
    stabiliser = Stabiliser(CONFIG, wall_clock=clock)
    happy = constant({"happy": 0.9, "neutral": 0.1})
    events = run(stabiliser, (face(i / FPS, happy) for i in range(100)))
    assert len(events) == 1
    ts, event = events[0]
    # A constant input qualifies from the first frame, so the switch comes exactly at the dwell.
    assert ts == pytest.approx(CONFIG.min_dwell_s)
    assert (event.mood, event.previous, event.override) == ("happy", None, False)
    assert event.confidence == pytest.approx(0.9)
    assert list(event.probabilities) == list(EMOTIONS)
    assert sum(event.probabilities.values()) == pytest.approx(1.0)
    assert event.since == 1_700_000_001.0
    assert clock.calls == 1  # only the event was stamped: no decision read the clock


def test_clean_switch_latency_is_dwell_plus_a_fraction_of_tau():
    stabiliser = Stabiliser(CONFIG)
    rng = np.random.default_rng(1)
    segments = [(EMOTIONS.index("sad"), 30.0), (EMOTIONS.index("happy"), 30.0)]
    events = run(stabiliser, (r for r, _ in noisy_schedule(segments, 0.0, rng)))
    assert [e.mood for _, e in events] == ["sad", "happy"]
    latencies, false = switch_stats(segments, events)
    assert false == 0
    first, switch = latencies
    assert CONFIG.min_dwell_s <= first <= CONFIG.min_dwell_s + 1.0
    assert CONFIG.min_dwell_s <= switch <= CONFIG.min_dwell_s + 3 * CONFIG.smoothing_s
    assert events[1][1].previous == "sad"
    print(f"\nclean: first mood after {first:.1f} s, switch after {switch:.1f} s")


def test_no_flicker_at_30_percent_label_noise_over_two_hours():
    stabiliser = Stabiliser(CONFIG)
    rng = np.random.default_rng(2)
    segments = random_segments(120, 60.0, rng)
    events = run(stabiliser, (r for r, _ in noisy_schedule(segments, 0.3, rng)))
    latencies, false = switch_stats(segments, events)
    assert false == 0
    assert len(latencies) == len(segments)  # every real change was reported, once
    assert np.median(latencies[1:]) <= TYPICAL_LATENCY_BOUND
    print(f"\n30% noise, {len(segments)} one-minute moods at {FPS:g} fps: {false} false switches, "
          f"latency median {np.median(latencies[1:]):.1f} s, max {max(latencies[1:]):.1f} s")


def test_constant_mood_under_30_percent_noise_reports_once():
    stabiliser = Stabiliser(CONFIG)
    rng = np.random.default_rng(3)
    segments = [(EMOTIONS.index("neutral"), 3600.0)]
    events = run(stabiliser, (r for r, _ in noisy_schedule(segments, 0.3, rng)))
    assert [e.mood for _, e in events] == ["neutral"]


def test_pure_noise_never_settles_below_the_confidence_gate():
    stabiliser = Stabiliser(CONFIG)
    rng = np.random.default_rng(4)
    readings = (face(i / FPS, peaked(int(rng.integers(0, 7)), rng)) for i in range(int(600 * FPS)))
    assert run(stabiliser, readings) == []
    assert stabiliser.mood is None


def test_hysteresis_holds_the_current_mood_against_a_narrow_lead():
    stabiliser = Stabiliser(CONFIG)
    run(stabiliser, (face(i / FPS, constant({"sad": 0.8, "angry": 0.2})) for i in range(50)))
    assert stabiliser.mood == "sad"
    narrow = constant({"sad": 0.42, "angry": 0.51, "neutral": 0.07})  # ahead by 0.09 < margin 0.1
    t0 = 10.0
    assert run(stabiliser, (face(t0 + i / FPS, narrow) for i in range(300))) == []
    clear = constant({"sad": 0.38, "angry": 0.55, "neutral": 0.07})  # ahead by 0.17
    t1 = t0 + 60.0
    events = run(stabiliser, (face(t1 + i / FPS, clear) for i in range(300)))
    assert [(e.previous, e.mood) for _, e in events] == [("sad", "angry")]


def test_no_face_after_no_face_s_then_a_fresh_start():
    clock = FakeWallClock()
    stabiliser = Stabiliser(CONFIG, wall_clock=clock)
    happy, surprise = constant({"happy": 0.9, "neutral": 0.1}), constant({"surprise": 0.8, "fear": 0.2})
    run(stabiliser, (face(i / FPS, happy) for i in range(100)))  # 0 .. 19.8 s
    last_face = 99 / FPS
    events = run(stabiliser, (nobody(20.0 + i / FPS) for i in range(100)))
    assert len(events) == 1
    ts, event = events[0]
    assert last_face + CONFIG.no_face_s - 1e-9 <= ts < last_face + CONFIG.no_face_s + 1 / FPS
    assert (event.mood, event.previous, event.confidence, event.probabilities) == (NO_FACE, "happy", 0.0, {})
    assert stabiliser.probabilities is None  # the smoothing starts afresh for the next face
    # The returning face is judged on its own: its first frame is the whole average.
    stabiliser.update(face(40.0, surprise))
    assert stabiliser.probabilities["surprise"] == pytest.approx(0.8)
    events = run(stabiliser, (face(40.0 + i / FPS, surprise) for i in range(1, 100)))
    assert [(e.previous, e.mood) for _, e in events] == [(NO_FACE, "surprise")]
    assert events[0][0] == pytest.approx(40.0 + CONFIG.min_dwell_s)


def test_no_face_from_the_start_and_short_dropouts_do_not_count():
    stabiliser = Stabiliser(CONFIG)
    events = run(stabiliser, (nobody(100.0 + i / FPS) for i in range(100)))
    assert [(e.previous, e.mood) for _, e in events] == [(None, NO_FACE)]
    assert events[0][0] == pytest.approx(100.0 + CONFIG.no_face_s)
    # A face that Haar misses for 9 s at a time never turns into no_face.
    stabiliser = Stabiliser(CONFIG)
    readings = []
    for i in range(int(300 * FPS)):
        ts = i / FPS
        readings.append(nobody(ts) if ts % 10.0 < 9.0 else face(ts, constant({"fear": 0.7, "sad": 0.3})))
    assert [e.mood for _, e in run(stabiliser, readings)] == ["fear"]


def test_override_and_expiry():
    clock = FakeWallClock()
    stabiliser = Stabiliser(CONFIG, wall_clock=clock)
    sad, angry = constant({"sad": 0.9, "neutral": 0.1}), constant({"angry": 0.9, "fear": 0.1})
    run(stabiliser, (face(i / FPS, sad) for i in range(50)))
    assert stabiliser.mood == "sad"
    event = stabiliser.override("happy", until_ts=40.0)
    assert (event.mood, event.previous, event.override, event.confidence) == ("happy", "sad", True, 1.0)
    assert event.probabilities["happy"] == 1.0 and sum(event.probabilities.values()) == 1.0
    # The camera changes its mind during the override: tracked, not reported.
    assert run(stabiliser, (face(10.0 + i / FPS, angry) for i in range(150))) == []  # to 39.8 s
    assert (stabiliser.mood, stabiliser.camera_mood) == ("happy", "angry")
    event = stabiliser.update(face(40.0, angry))
    assert (event.mood, event.previous, event.override) == ("angry", "happy", False)
    assert stabiliser.override_until is None


def test_override_expiry_reports_the_camera_mood_even_when_unchanged_and_cancel_works():
    stabiliser = Stabiliser(CONFIG)
    sad = constant({"sad": 0.9, "neutral": 0.1})
    run(stabiliser, (face(i / FPS, sad) for i in range(50)))
    assert stabiliser.override("sad", until_ts=20.0).override is True
    assert stabiliser.override("sad", until_ts=25.0) is None  # extending it changes nothing visible
    events = run(stabiliser, (face(10.0 + i / FPS, sad) for i in range(100)))
    assert [(e.mood, e.previous, e.override) for _, e in events] == [("sad", "sad", False)]
    assert events[0][0] == pytest.approx(25.0)
    stabiliser.override("happy", until_ts=1e9)
    event = stabiliser.cancel_override()
    assert (event.mood, event.previous, event.override) == ("sad", "happy", False)
    with pytest.raises(ValueError, match="override mood must be one of"):
        stabiliser.override("ecstatic", until_ts=1e9)


def test_irregular_intervals_weigh_readings_by_the_time_they_stand_for():
    # After a step from sad to happy, the smoothed happy probability is exactly
    # 1 - exp(-(t - t_last_sad) / tau) however the frames are spaced.
    tau = CONFIG.smoothing_s
    rng = np.random.default_rng(5)
    sad, happy = constant({"sad": 1.0}), constant({"happy": 1.0})
    for times in (np.arange(0, 80, 0.2), np.cumsum(rng.uniform(0.02, 1.5, 200))):
        stabiliser = Stabiliser(CONFIG)
        step = times[len(times) // 2]
        last_sad = times[times < step][-1]
        for ts in times:
            stabiliser.update(face(float(ts), sad if ts < step else happy))
            if ts >= step:
                expected = 1.0 - math.exp(-(ts - last_sad) / tau)
                assert stabiliser.probabilities["happy"] == pytest.approx(expected, abs=1e-6)


def test_irregular_frame_times_under_noise_keep_latency_and_no_flicker():
    stabiliser = Stabiliser(CONFIG)
    rng = np.random.default_rng(6)
    segments = random_segments(30, 60.0, rng)
    # Jittery frames: 0.05-0.6 s apart, with the odd 2 s stall.
    gaps = rng.uniform(0.05, 0.6, 8000)
    gaps[rng.random(8000) < 0.01] = 2.0
    times = np.cumsum(gaps)
    times = times[times < 1800.0]
    events = run(stabiliser, (r for r, _ in noisy_schedule(segments, 0.3, rng, times)))
    latencies, false = switch_stats(segments, events)
    assert false == 0
    assert len(latencies) == len(segments)
    assert np.median(latencies[1:]) <= TYPICAL_LATENCY_BOUND
    print(f"\nirregular frames, 30% noise: {false} false switches, "
          f"latency median {np.median(latencies[1:]):.1f} s, max {max(latencies[1:]):.1f} s")


def test_the_first_reading_counts_like_any_other_frame():
    stabiliser = Stabiliser(CONFIG)
    stabiliser.update(face(0.0, constant({"angry": 1.0})))
    stabiliser.update(face(0.2, constant({"happy": 1.0})))
    # Weighted like a steady stream: the older frame has decayed by one interval.
    decay = math.exp(-0.2 / CONFIG.smoothing_s)
    assert stabiliser.probabilities["angry"] == pytest.approx(decay / (1 + decay))


def test_stale_and_malformed_readings_change_nothing():
    stabiliser = Stabiliser(CONFIG)
    stabiliser.update(face(10.0, constant({"happy": 1.0})))
    before = stabiliser.probabilities
    assert stabiliser.update(face(9.0, constant({"sad": 1.0}))) is None
    assert stabiliser.probabilities == before
    for bad in ((0.5, 0.5), (float("nan"),) * 7, (-0.1, 0.5, 0.6, 0, 0, 0, 0), (0.0,) * 7):
        with pytest.raises(ValueError, match="probabilities"):
            stabiliser.update(face(11.0, bad))
    with pytest.raises(ValueError, match="timestamp"):
        stabiliser.update(face(float("inf"), constant({"happy": 1.0})))
    assert stabiliser.probabilities == before
    stabiliser.update(face(10.2, constant({"happy": 1.0})))  # time did not move on for the bad ones


def test_a_zero_dwell_switches_on_the_first_qualifying_frame():
    stabiliser = Stabiliser(MoodConfig(min_dwell_s=0.0))
    event = stabiliser.update(face(0.0, constant({"disgust": 0.6, "angry": 0.4})))
    assert event is not None and event.mood == "disgust"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 3.0),  # gap to the previous frame, s
            st.one_of(st.none(), st.integers(0, len(EMOTIONS) - 1)),  # no face, or the peak class
            st.floats(0.3, 0.95),  # peak height
        ),
        min_size=1,
        max_size=400,
    )
)
def test_invariants_on_arbitrary_sequences(frames):
    stabiliser = Stabiliser(CONFIG)
    ts, switches, previous = 0.0, [], None
    for gap, label, height in frames:
        ts += gap
        if label is None:
            reading = nobody(ts)
        else:
            probs = [(1.0 - height) / 6] * 7
            probs[label] = height
            reading = face(ts, tuple(probs))
        event = stabiliser.update(reading)
        estimate = stabiliser.probabilities
        if estimate is not None:
            assert sum(estimate.values()) == pytest.approx(1.0)
        if event is None:
            continue
        assert event.mood != event.previous and event.previous == previous
        if event.mood != NO_FACE:
            assert event.confidence >= CONFIG.confidence - 1e-9
            if switches and switches[-1][1] != NO_FACE:
                # Two emotion switches are at least a dwell apart: the candidate must
                # have started after the previous switch.
                assert ts - switches[-1][0] >= CONFIG.min_dwell_s - 1e-9
        switches.append((ts, event.mood))
        previous = event.mood
