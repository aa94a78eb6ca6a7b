"""Mood and track history in SQLite (WAL) in the state dir.

One row per track: the moods before, during and after it, their valence,
the user's like or skip, and whether it helped. The bandit's evidence is
rebuilt from these rows at start, so learning survives restarts without a
second store. ``moodbox history`` reads the same file while the daemon writes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["History", "Outcome", "TrackRecord", "read_history"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrackRecord:
    started: float  # wall-clock (epoch) seconds
    ended: float
    track_uri: str
    track: str
    artists: str
    playlist_uri: str
    playlist: str
    policy: str
    target: str
    mood_before: str
    valence_before: float | None
    mood_during: str
    valence_during: float | None
    mood_after: str
    valence_after: float | None
    improved: bool | None
    completed: bool
    feedback: str | None
    played_s: float


@dataclass(frozen=True)
class Outcome:
    mood: str
    playlist_uri: str
    improved: bool | None
    feedback: str | None


_TRACK_COLUMNS = [f.name for f in fields(TrackRecord)]
_SQL_TYPES = {"float": "REAL", "float | None": "REAL", "bool | None": "INTEGER", "bool": "INTEGER",
              "str | None": "TEXT", "str": "TEXT"}
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tracks (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{f.name} {_SQL_TYPES[str(f.type)]}" for f in fields(TrackRecord)) + ")",
    "CREATE TABLE IF NOT EXISTS moods (id INTEGER PRIMARY KEY, at REAL, mood TEXT, previous TEXT, "
    "confidence REAL, override INTEGER)",
]


class History:
    """The writer, used from the music thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            # Keep the damaged file for a person to look at; the box goes on with a fresh one.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("history %s unreadable (%s); moved to %s, starting a new one", path, exc, aside.name)
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            # A file cut short can still open and take the schema; only reading its pages shows the damage.
            problems = db.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                raise sqlite3.DatabaseError("quick_check: " + "; ".join(str(p[0]) for p in problems[:3]))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut loses at most the last rows
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def add_track(self, record: TrackRecord) -> None:
        placeholders = ", ".join("?" for _ in _TRACK_COLUMNS)
        self._write(f"INSERT INTO tracks ({', '.join(_TRACK_COLUMNS)}) VALUES ({placeholders})", astuple(record))

    def add_mood(self, at: float, mood: str, previous: str | None, confidence: float, override: bool) -> None:
        self._write("INSERT INTO moods (at, mood, previous, confidence, override) VALUES (?, ?, ?, ?, ?)",
                    (at, mood, previous, confidence, int(override)))

    def _write(self, sql: str, values: tuple) -> None:
        try:
            self._db.execute(sql, values)
        except sqlite3.Error as exc:  # a full disk loses history rows, never the music
            log.warning("history write failed: %s", exc)

    def outcomes(self) -> list[Outcome]:
        """Evidence for the bandit: every judged or rated track, oldest first."""
        try:
            rows = self._db.execute(
                "SELECT mood_before, playlist_uri, improved, feedback FROM tracks "
                "WHERE playlist_uri != '' AND (improved IS NOT NULL OR feedback IS NOT NULL) ORDER BY id"
            ).fetchall()
        except sqlite3.Error as exc:
            log.warning("history unreadable, learning starts afresh: %s", exc)
            return []
        return [Outcome(mood, uri, None if improved is None else bool(improved), feedback)
                for mood, uri, improved, feedback in rows]

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass


def read_history(path: Path, table: str = "tracks") -> pd.DataFrame:
    """The ``tracks`` or ``moods`` table as a frame, times as UTC datetimes; read-only."""
    import pandas as pd  # only the CLI exports history: keep it out of the daemon's memory

    if table not in ("tracks", "moods"):
        raise ValueError(f"unknown table {table!r}")
    if not path.exists():
        raise FileNotFoundError(f"no history at {path}: the daemon has not recorded any yet")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)) as db:
        frame = pd.read_sql_query(f"SELECT * FROM {table} ORDER BY id", db)  # noqa: S608 (table is checked)
    for column in ("started", "ended", "at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    for column in ("improved", "completed", "override"):
        if column in frame:
            frame[column] = frame[column].astype("boolean")
    return frame
