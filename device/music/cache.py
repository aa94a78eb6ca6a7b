"""Playlist tracks as pandas frames, one CSV per playlist in the state dir.

The paper's CSVs, done right: refreshed when older than a day, written
atomically, and read back when Spotify cannot be reached, so the display
still has names and playback can still start from track URIs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from device.config import PlaylistConfig
from device.music.player import Track

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "TrackCache"]

log = logging.getLogger(__name__)

COLUMNS = ["id", "uri", "name", "album", "artists", "duration_ms", "playlist", "playlist_uri", "mood"]
_TEXT = {c: str for c in COLUMNS if c != "duration_ms"}


class TrackCache:
    """Track lists by playlist URI, from and to ``directory``/<playlist id>.csv."""

    def __init__(self, directory: Path, max_age_s: float = 86400.0, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_age_s = max_age_s
        self._clock = clock
        self._frames: dict[str, pd.DataFrame] = {}
        self._index: dict[str, Track] = {}

    def path(self, playlist_uri: str) -> Path:
        return self.directory / f"{playlist_uri.rsplit(':', 1)[-1]}.csv"

    def load(self, playlists: Sequence[PlaylistConfig]) -> int:
        """Read the CSVs of ``playlists`` that exist; returns how many tracks are known."""
        import pandas as pd  # imported on first use: ~34 MB that a box without playlists never needs

        for playlist in playlists:
            path = self.path(playlist.uri)
            if not path.exists():
                continue
            try:
                frame = pd.read_csv(path, dtype=_TEXT, keep_default_na=False)
                missing = set(COLUMNS) - set(frame.columns)
                if missing:
                    raise ValueError(f"columns missing: {', '.join(sorted(missing))}")
                frame["duration_ms"] = pd.to_numeric(frame["duration_ms"], errors="coerce").fillna(0).astype(int)
            except (OSError, ValueError, pd.errors.ParserError) as exc:
                log.warning("track cache %s unreadable, will refetch: %s", path.name, exc)
                continue
            self._remember(playlist.uri, frame[COLUMNS])
        return len(self._index)

    def store(self, playlist: PlaylistConfig, tracks: Sequence[Track]) -> pd.DataFrame:
        """Replace a playlist's track list in memory and on disk."""
        import pandas as pd

        frame = pd.DataFrame(
            [(t.id, t.uri, t.name, t.album, t.artists, int(t.duration_ms), playlist.name, playlist.uri,
              "|".join(playlist.moods)) for t in tracks],
            columns=COLUMNS,
        )
        self._remember(playlist.uri, frame)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tracks-", suffix=".csv")
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                frame.to_csv(out, index=False)
            os.replace(tmp, self.path(playlist.uri))
        except OSError as exc:  # a full disk costs the cache, not the music
            log.warning("cannot write track cache for %s: %s", playlist.name, exc)
        return frame

    def _remember(self, playlist_uri: str, frame: pd.DataFrame) -> None:
        self._frames[playlist_uri] = frame.reset_index(drop=True)
        # Rebuilt whole: a track can sit in several playlists. Thousands of rows, once a day.
        self._index = {track.uri: track for f in self._frames.values() for track in _rows(f)}

    def due(self, playlist_uri: str) -> bool:
        """True when the playlist's CSV is missing or older than ``max_age_s``."""
        try:
            age = self._clock() - self.path(playlist_uri).stat().st_mtime
        except OSError:
            return True
        return age >= self.max_age_s or playlist_uri not in self._frames

    def tracks(self, playlist_uri: str) -> list[Track]:
        frame = self._frames.get(playlist_uri)
        return [] if frame is None else _rows(frame)

    def track(self, uri: str) -> Track | None:
        return self._index.get(uri)

    def frame(self) -> pd.DataFrame:
        """Every cached track, all playlists."""
        import pandas as pd

        if not self._frames:
            return pd.DataFrame(columns=COLUMNS)
        return pd.concat(self._frames.values(), ignore_index=True)


def _rows(frame: pd.DataFrame) -> list[Track]:
    return [Track(row.uri, row.name, row.artists, row.album, int(row.duration_ms))
            for row in frame.itertuples(index=False)]
