"""Which playlist helps this user: Thompson sampling per mood over its candidate playlists.

Each (mood, playlist) pair keeps a Beta posterior over "the mood improved over
a track". A like or skip adds ``feedback_weight`` outcomes of evidence. The
paper's step 4 ("if the emotion does not change after a song, change the
playlist") is :func:`choose_playlist`'s ``avoid``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from device.music.history import Outcome

__all__ = ["Bandit", "choose_playlist"]


class Bandit:
    def __init__(self, rng: random.Random | None = None, feedback_weight: float = 2.0,
                 prior: tuple[float, float] = (1.0, 1.0)) -> None:
        self.rng = rng or random.Random()
        self.feedback_weight = feedback_weight
        self.prior = prior
        self._counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def update(self, mood: str, playlist: str, success: bool, weight: float = 1.0) -> None:
        self._counts[(mood, playlist)][0 if success else 1] += weight

    def observe(self, outcome: Outcome) -> None:
        """One history row: the mood outcome and the user's like or skip."""
        if outcome.improved is not None:
            self.update(outcome.mood, outcome.playlist_uri, outcome.improved)
        if outcome.feedback in ("like", "skip") and self.feedback_weight > 0:
            self.update(outcome.mood, outcome.playlist_uri, outcome.feedback == "like", self.feedback_weight)

    def posterior(self, mood: str, playlist: str) -> tuple[float, float]:
        wins, losses = self._counts.get((mood, playlist), (0.0, 0.0))
        return self.prior[0] + wins, self.prior[1] + losses

    def mean(self, mood: str, playlist: str) -> float:
        a, b = self.posterior(mood, playlist)
        return a / (a + b)

    def choose(self, mood: str, playlists: Sequence[str]) -> str:
        """Thompson sampling: draw from each posterior, play the best draw."""
        return max(playlists, key=lambda uri: self.rng.betavariate(*self.posterior(mood, uri)))


def choose_playlist(candidates: Sequence[str], mood: str, bandit: Bandit | None,
                    avoid: str | None = None) -> str | None:
    """The playlist to play for ``mood`` among ``candidates`` (config order).

    ``avoid`` is the playlist whose last track did not help this mood (step 4).
    Without a bandit the first candidate is the fixed mapping, and step 4 moves
    on to the next one in order. With one, a failed playlist is left unless
    the evidence still rates it best: forcing a switch after every miss would
    keep leaving the best playlist on bad luck (bench/regret.py measures it).
    """
    candidates = list(candidates)
    if not candidates:
        return None
    failed = avoid in candidates and len(candidates) > 1
    if bandit is None:
        return candidates[(candidates.index(avoid) + 1) % len(candidates)] if failed else candidates[0]
    if failed:
        others = [uri for uri in candidates if uri != avoid]
        if bandit.mean(mood, avoid) < max(bandit.mean(mood, uri) for uri in others):
            candidates = others
    return bandit.choose(mood, candidates)
