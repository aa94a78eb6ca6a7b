"""The bandit (and its regret in simulation), the SQLite history and the CSV track cache."""

from __future__ import annotations

import importlib.util
import os
import random
import sqlite3
import statistics
import sys
import time

import pandas as pd
import pytest

from device.config import PlaylistConfig
from device.music.cache import COLUMNS, TrackCache
from device.music.history import History, Outcome, TrackRecord, read_history
from device.music.learning import Bandit, choose_playlist
from device.music.player import Track
from conftest import REPO

A, B, C = "spotify:playlist:a", "spotify:playlist:b", "spotify:playlist:c"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_regret", REPO / "bench" / "regret.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# -- the bandit ---------------------------------------------------------------------------


def test_outcomes_and_feedback_move_the_posterior():
    bandit = Bandit(random.Random(1), feedback_weight=2.0)
    bandit.observe(Outcome("sad", A, True, None))
    bandit.observe(Outcome("sad", A, None, "skip"))
    bandit.observe(Outcome("sad", A, False, "like"))
    assert bandit.posterior("sad", A) == (1 + 1 + 2, 1 + 2 + 1)
    assert bandit.posterior("happy", A) == (1.0, 1.0)  # per mood


def test_thompson_sampling_prefers_what_helped():
    bandit = Bandit(random.Random(2))
    for _ in range(20):
        bandit.update("sad", A, False)
        bandit.update("sad", B, True)
    picks = [bandit.choose("sad", [A, B, C]) for _ in range(200)]
    assert picks.count(B) > 150 and picks.count(A) < 5


def test_fixed_mapping_and_its_step_four_rotation():
    assert choose_playlist([A, B, C], "sad", None) == A
    assert choose_playlist([A, B, C], "sad", None, avoid=A) == B
    assert choose_playlist([A, B, C], "sad", None, avoid=C) == A
    assert choose_playlist([A], "sad", None, avoid=A) == A  # nothing else to try
    assert choose_playlist([], "sad", None) is None


def test_step_four_with_learning_leaves_a_failed_playlist_unless_it_is_still_best():
    fresh = Bandit(random.Random(3))
    fresh.update("sad", A, False)
    assert all(choose_playlist([A, B], "sad", fresh, avoid=A) == B for _ in range(50))
    proven = Bandit(random.Random(4))
    for _ in range(30):
        proven.update("sad", A, True)
        proven.update("sad", B, False)
    proven.update("sad", A, False)  # one bad track does not undo thirty good ones
    assert sum(choose_playlist([A, B], "sad", proven, avoid=A) == A for _ in range(50)) > 45


def test_bandit_regret_is_at_most_half_the_fixed_mappings(record_property):
    """200 songs, synthetic listener with fixed hidden responses, mean over 20 seeds (bench/regret.py)."""
    bench = _load_bench()
    results = bench.table(songs=200, seeds=20)
    assert results == bench.table(songs=200, seeds=20)  # seeded: the same figures every run
    fixed = statistics.mean(results["fixed"])
    box = statistics.mean(results["bandit+switch"])
    for name, values in results.items():
        record_property(f"regret_{name}", round(statistics.mean(values), 2))
    print(f"\nregret over 200 songs, mean of 20 seeds: fixed {fixed:.1f}, moodbox {box:.1f} ({box / fixed:.0%})")
    assert box <= 0.5 * fixed
    assert statistics.mean(results["fixed+switch"]) < fixed  # step 4 alone helps a little


# -- history ----------------------------------------------------------------------------------


def _record(**changes) -> TrackRecord:
    values = dict(started=1.7e9, ended=1.7e9 + 180, track_uri="spotify:track:x", track="X", artists="Y",
                  playlist_uri=A, playlist="A", policy="uplift", target="uplifting", mood_before="sad",
                  valence_before=-0.63, mood_during="sad", valence_during=-0.5, mood_after="neutral",
                  valence_after=0.0, improved=True, completed=True, feedback=None, played_s=180.0)
    values.update(changes)
    return TrackRecord(**values)


def test_history_is_wal_and_feeds_the_bandit(tmp_path):
    history = History(tmp_path / "history.sqlite")
    history.add_track(_record())
    history.add_track(_record(improved=None, completed=False, feedback="skip"))
    history.add_track(_record(improved=None, completed=False))  # neither judged nor rated: no evidence
    history.add_track(_record(playlist_uri="", improved=False))  # not our music: no evidence
    history.add_mood(1.7e9, "sad", None, 0.8, False)
    assert history._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert history.outcomes() == [Outcome("sad", A, True, None), Outcome("sad", A, None, "skip")]
    frame = read_history(tmp_path / "history.sqlite")  # a second connection while the writer is open
    assert len(frame) == 4 and frame["improved"].tolist()[:2] == [True, pd.NA]
    assert str(frame["started"].dt.tz) == "UTC"
    assert read_history(tmp_path / "history.sqlite", "moods")["mood"].tolist() == ["sad"]
    history.close()


def test_a_corrupt_history_is_kept_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    history = History(path)
    history.add_track(_record())
    assert len(history.outcomes()) == 1
    assert [p.name for p in tmp_path.glob("history.sqlite.corrupt-*")]
    assert "moved to" in caplog.text
    history.close()


def test_history_write_failure_is_logged_not_raised(tmp_path, caplog):
    history = History(tmp_path / "history.sqlite")
    history._db.execute("DROP TABLE tracks")
    history.add_track(_record())  # no exception
    assert "history write failed" in caplog.text
    assert history.outcomes() == []
    history.close()


def test_reading_a_missing_history_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no history"):
        read_history(tmp_path / "history.sqlite")
    with pytest.raises(ValueError):
        read_history(tmp_path / "history.sqlite", "users; DROP TABLE tracks")


# -- the track cache ---------------------------------------------------------------------------------


def _playlist(uri: str, name: str) -> PlaylistConfig:
    return PlaylistConfig(uri=uri, name=name, moods=("sad", "happy"), valence=0.5, arousal=0.5)


def test_cache_round_trip_through_csv(tmp_path):
    shared = Track("spotify:track:s", "Shared, with comma", "P, Q", "Album \"quoted\"", 1234)
    cache = TrackCache(tmp_path)
    cache.store(_playlist(A, "A"), [shared, Track("spotify:track:a1", "NA", "", "", 10)])
    cache.store(_playlist(B, "B"), [shared])
    frame = pd.read_csv(cache.path(A))
    assert list(frame.columns) == COLUMNS and frame["mood"].tolist() == ["sad|happy", "sad|happy"]
    again = TrackCache(tmp_path)
    assert again.load([_playlist(A, "A"), _playlist(B, "B"), _playlist(C, "C")]) == 2
    assert again.tracks(A) == [shared, Track("spotify:track:a1", "NA", "", "", 10)]  # "NA" stays a name
    assert again.tracks(C) == []
    cache.store(_playlist(B, "B"), [])  # a playlist emptied does not lose the track elsewhere
    assert cache.track(shared.uri) == shared and cache.tracks(B) == []
    assert len(again.frame()) == 3


def test_cache_is_due_when_missing_or_a_day_old(tmp_path):
    now = [time.time()]
    cache = TrackCache(tmp_path, max_age_s=86400, clock=lambda: now[0])
    assert cache.due(A)
    cache.store(_playlist(A, "A"), [])
    assert not cache.due(A)
    now[0] += 86401
    assert cache.due(A)
    assert TrackCache(tmp_path, clock=lambda: now[0] - 86401).due(A)  # on disk but not loaded yet


def test_a_damaged_csv_is_ignored(tmp_path, caplog):
    cache = TrackCache(tmp_path)
    cache.store(_playlist(A, "A"), [Track("spotify:track:a1", "One", "", "", 10)])
    cache.path(A).write_text("id,uri\nonly,two columns\n")
    assert TrackCache(tmp_path).load([_playlist(A, "A")]) == 0
    assert "unreadable" in caplog.text


def test_cache_write_failure_keeps_the_tracks_in_memory(tmp_path, caplog):
    blocker = tmp_path / "tracks"
    blocker.write_text("a file where the folder should be")
    cache = TrackCache(blocker)
    cache.store(_playlist(A, "A"), [Track("spotify:track:a1", "One", "", "", 10)])
    assert cache.tracks(A)[0].name == "One" and "cannot write" in caplog.text
    assert not os.path.isdir(blocker)


def test_history_survives_concurrent_reader_and_writer(tmp_path):
    history = History(tmp_path / "h.sqlite")
    reader = sqlite3.connect(tmp_path / "h.sqlite")
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM tracks").fetchone() == (0,)
    history.add_track(_record())  # WAL: a reader in a transaction does not block the writer
    reader.rollback()
    assert reader.execute("SELECT count(*) FROM tracks").fetchone() == (1,)
    reader.close()
    history.close()
