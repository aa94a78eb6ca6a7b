"""Does the box learn what helps? Cumulative regret of playlist choice against a synthetic listener.

Each mood has a few candidate playlists; the listener's hidden chance that a
track from a playlist improves their mood is fixed per (mood, playlist) and
drawn at random per seed. The fixed mapping (the paper's ``music_dist``)
always plays the first playlist listed for a mood. Regret per song is the
best playlist's chance minus the chosen one's; its sum over the songs is
the cumulative regret. Seeded and deterministic.

    python bench/regret.py [--songs 200] [--seeds 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device.music.history import Outcome  # noqa: E402
from device.music.learning import Bandit, choose_playlist  # noqa: E402

#: How often each mood is seen when a track starts (FER-style: mostly neutral and happy).
MOOD_WEIGHTS = {"neutral": 0.30, "happy": 0.20, "sad": 0.15, "angry": 0.12, "surprise": 0.10, "fear": 0.08,
                "disgust": 0.05}
PLAYLISTS_PER_MOOD = 3
FEEDBACK_RATE = 0.2  # share of tracks the listener likes or skips
#: fixed: the paper's one playlist per mood; +switch: step 4, another playlist after a track that did not help;
#: bandit: Thompson sampling with likes and skips. Moodbox runs "bandit+switch".
STRATEGIES = ("fixed", "fixed+switch", "bandit", "bandit+switch")


@dataclass(frozen=True)
class Listener:
    """The hidden truth: P(mood improves | mood, playlist)."""

    helps: dict[str, dict[str, float]]

    @classmethod
    def draw(cls, rng: random.Random) -> Listener:
        return cls({mood: {f"spotify:playlist:{mood}{k}": rng.uniform(0.1, 0.9) for k in range(PLAYLISTS_PER_MOOD)}
                    for mood in MOOD_WEIGHTS})


def simulate(strategy: str, seed: int, songs: int = 200, feedback_weight: float = 2.0) -> float:
    """Cumulative regret of ``strategy`` over ``songs`` tracks for the listener of ``seed``."""
    world = random.Random(seed)
    listener = Listener.draw(world)
    moods = world.choices(list(MOOD_WEIGHTS), weights=list(MOOD_WEIGHTS.values()), k=songs)
    chance = random.Random(seed + 1)  # outcomes: same stream for every strategy
    bandit = Bandit(random.Random(seed + 2), feedback_weight) if strategy.startswith("bandit") else None
    switch = strategy.endswith("+switch")
    last: dict[str, tuple[str, bool]] = {}
    regret = 0.0
    for mood in moods:
        helps = listener.helps[mood]
        candidates = list(helps)
        avoid = None
        if switch and mood in last and not last[mood][1]:
            avoid = last[mood][0]
        chosen = choose_playlist(candidates, mood, bandit, avoid)
        regret += max(helps.values()) - helps[chosen]
        success = chance.random() < helps[chosen]
        feedback = None
        if chance.random() < FEEDBACK_RATE:
            feedback = "like" if chance.random() < helps[chosen] else "skip"
        if bandit is not None:
            bandit.observe(Outcome(mood, chosen, success, feedback))
        last[mood] = (chosen, success)
    return regret


def table(songs: int = 200, seeds: int = 20, feedback_weight: float = 2.0) -> dict[str, list[float]]:
    return {strategy: [simulate(strategy, seed, songs, feedback_weight) for seed in range(seeds)]
            for strategy in STRATEGIES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    results = table(args.songs, args.seeds)
    results["bandit+switch, no likes/skips"] = table(args.songs, args.seeds, feedback_weight=0.0)["bandit+switch"]
    fixed = statistics.mean(results["fixed"])
    print(f"cumulative regret over {args.songs} songs, mean (sd) over {args.seeds} seeds")
    for strategy, values in results.items():
        mean = statistics.mean(values)
        print(f"  {strategy:<30} {mean:6.1f} ({statistics.stdev(values):4.1f})  {mean / fixed:5.0%} of fixed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
