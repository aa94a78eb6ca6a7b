"""Mood x policy -> target, the iso path, candidate playlists, and the music config's checks."""

from __future__ import annotations

import math
import typing

import pytest

from device.config import REPO_CONFIG, ConfigError, MoodName, PlaylistConfig, load_config, parse_config
from device.music import policy
from device.music.policy import CIRCUMPLEX, candidates, improved, iso_path, target_for

#: The policy table as the issue states it: (label, valence, arousal) per mood and policy.
EXPECTED = {
    "uplift": {
        "angry": ("calm", 0.40, -0.50), "disgust": ("calm", 0.40, -0.50), "fear": ("calm", 0.40, -0.50),
        "sad": ("uplifting", 0.70, 0.50), "happy": ("keep happy", 0.81, 0.51),
        "surprise": ("everyday", 0.30, 0.10), "neutral": ("everyday", 0.30, 0.10),
    },
    "match": {mood: (f"match {mood}", v, a) for mood, (v, a) in {
        "angry": (-0.51, 0.59), "disgust": (-0.60, 0.35), "fear": (-0.64, 0.60), "happy": (0.81, 0.51),
        "sad": (-0.63, -0.27), "surprise": (0.40, 0.67), "neutral": (0.0, 0.0)}.items()},
}


@pytest.mark.parametrize("name", ["uplift", "match"])
@pytest.mark.parametrize("mood", sorted(CIRCUMPLEX))
def test_policy_table(name, mood):
    target = target_for(name, mood)
    label, v, a = EXPECTED[name][mood]
    assert (target.label, target.valence, target.arousal) == (label, v, a)
    assert target.tagged == (name == "uplift")  # uplift plays the user's own playlists for the mood


@pytest.mark.parametrize("mood", sorted(CIRCUMPLEX))
def test_iso_starts_matching_the_mood_and_ends_at_the_uplift_target(mood):
    path = [target_for("iso", mood, step=step, iso_tracks=3) for step in range(5)]
    uplift = target_for("uplift", mood)
    if mood == "happy":  # already at its target: no path to walk
        assert {t.label for t in path} == {"iso happy 1/1"} and path[0].key == uplift.key
        return
    assert [t.label for t in path] == [f"iso {mood} 1/3", f"iso {mood} 2/3", f"iso {mood} 3/3",
                                       f"iso {mood} 3/3", f"iso {mood} 3/3"]
    assert (path[0].valence, path[0].arousal) == CIRCUMPLEX[mood]
    assert path[2].key == uplift.key and path[2].tagged and path[2].final
    distances = [math.dist((t.valence, t.arousal), (uplift.valence, uplift.arousal)) for t in path[:3]]
    assert distances[0] > distances[1] > distances[2] == 0


def test_iso_path_has_the_configured_length_and_equal_steps():
    path = iso_path("sad", 5)
    assert len(path) == 5
    steps = [math.dist((a.valence, a.arousal), (b.valence, b.arousal)) for a, b in zip(path, path[1:])]
    assert max(steps) - min(steps) < 1e-9


@pytest.mark.parametrize("name", ["off", "uplift", "match", "iso"])
def test_no_music_target_for_no_face_or_off(name):
    assert target_for(name, "no_face") is None
    assert target_for("off", "sad") is None
    with pytest.raises(ValueError, match="unknown policy 'loud'"):
        target_for("loud", "sad")


def test_moods_with_the_same_target_share_a_key():
    keys = {mood: target_for("uplift", mood).key for mood in CIRCUMPLEX}
    assert keys["angry"] == keys["fear"] == keys["disgust"]
    assert keys["neutral"] == keys["surprise"]
    assert len(set(keys.values())) == 4
    match_keys = {target_for("match", mood).key for mood in CIRCUMPLEX}
    assert len(match_keys) == 7


def _playlist(name, moods, v, a):
    return PlaylistConfig(uri=f"spotify:playlist:{name}", name=name, moods=moods, valence=v, arousal=a)


PLAYLISTS = [
    _playlist("calm", ("angry", "fear"), 0.4, -0.6),
    _playlist("piano", ("angry",), 0.3, -0.8),
    _playlist("uplift", ("sad",), 0.8, 0.6),
    _playlist("blues", (), -0.6, -0.3),
    _playlist("metal", (), -0.4, 0.7),
]


def test_candidates_are_the_tagged_playlists_for_uplift():
    assert [p.name for p in candidates(target_for("uplift", "angry"), PLAYLISTS)] == ["calm", "piano"]
    assert [p.name for p in candidates(target_for("uplift", "fear"), PLAYLISTS)] == ["calm"]


def test_untagged_mood_falls_back_to_the_nearest_playlists():
    # Nothing is tagged "happy": the playlist nearest (0.81, 0.51) takes it.
    assert [p.name for p in candidates(target_for("uplift", "happy"), PLAYLISTS)] == ["uplift"]


def test_match_picks_by_coordinates_not_tags():
    assert [p.name for p in candidates(target_for("match", "sad"), PLAYLISTS)] == ["blues"]
    assert [p.name for p in candidates(target_for("match", "angry"), PLAYLISTS)] == ["metal"]
    assert candidates(target_for("match", "angry"), []) == []


@pytest.mark.parametrize(("before", "after", "expected"), [
    ("sad", "neutral", True), ("sad", "sad", False), ("angry", "happy", True), ("happy", "happy", True),
    ("neutral", "neutral", True), ("happy", "neutral", False), ("angry", "disgust", False),
    ("sad", "no_face", None), ("no_face", "happy", None),
])
def test_improved(before, after, expected):
    assert improved(before, after) is expected


def test_mood_names_in_config_are_the_model_labels():
    from device.preprocess import EMOTIONS

    assert set(typing.get_args(MoodName)) == set(EMOTIONS) == set(policy.CIRCUMPLEX)


def test_every_mood_has_an_uplift_playlist_in_the_example_config():
    playlists = load_config(REPO_CONFIG).music.playlists
    for mood in CIRCUMPLEX:
        assert [p for p in playlists if mood in p.moods], mood


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    return caught.value.problems


def test_localhost_redirect_is_refused_with_the_fix():
    (message,) = _problems('[spotify]\nredirect_uri = "http://localhost:8888/callback"\n')
    assert message.startswith("'spotify.redirect_uri' (line 2)")
    assert "no longer accepts 'localhost'" in message and "http://127.0.0.1:8888/callback" in message


@pytest.mark.parametrize("uri", ["https://example.com/callback", "http://192.168.1.5:8888/cb", "127.0.0.1:8888"])
def test_redirect_must_be_a_loopback_ip(uri):
    (message,) = _problems(f'[spotify]\nredirect_uri = "{uri}"\n')
    assert "loopback IP" in message


def test_loopback_redirects_are_accepted():
    for uri in ("http://127.0.0.1:8888/callback", "http://[::1]:8080/cb", "http://127.0.0.1/cb"):
        assert parse_config(f'[spotify]\nredirect_uri = "{uri}"\n').spotify.redirect_uri == uri


def test_playlist_links_become_uris_and_bad_ones_are_named():
    text = ('[[music.playlists]]\nuri = "https://open.spotify.com/intl-de/playlist/AbC123?si=xyz"\n'
            'name = "Mine"\nvalence = 0.1\narousal = 0.2\n')
    assert parse_config(text).music.playlists[0].uri == "spotify:playlist:AbC123"
    bad = text.replace("https://open.spotify.com/intl-de/playlist/AbC123?si=xyz", "spotify:album:AbC123")
    (message,) = _problems(bad)
    assert message.startswith("'music.playlists.0.uri'") and "spotify:playlist:<id>" in message


def test_playlist_fields_are_checked():
    text = ('[[music.playlists]]\nuri = "spotify:playlist:a"\nname = "A"\nmoods = ["glad"]\n'
            'valence = 1.5\narousal = 0\n')
    found = _problems(text)
    assert any("music.playlists.0.moods.0" in p and "'glad'" in p for p in found)
    assert any("music.playlists.0.valence" in p and "less than or equal to 1" in p for p in found)


def test_duplicate_playlists_are_refused():
    entry = '[[music.playlists]]\nuri = "spotify:playlist:a"\nname = "A"\nvalence = 0\narousal = 0\n'
    (message,) = _problems(entry + entry)
    assert "entry 1 repeats the uri of entry 0" in message


def test_api_base_gets_its_trailing_slash(monkeypatch):
    config = parse_config('[spotify]\napi_base = "http://127.0.0.1:9/v1"\naccounts_base = "http://127.0.0.1:9/"\n')
    assert config.spotify.api_base == "http://127.0.0.1:9/v1/"
    assert config.spotify.accounts_base == "http://127.0.0.1:9"


def test_client_secret_comes_from_the_environment_and_never_shows(monkeypatch):
    monkeypatch.setenv("MOODBOX_SPOTIFY_CLIENT_SECRET", "s3cr3t-value")
    config = parse_config("[spotify]\nclient_id = \"abc\"\n")
    assert config.spotify.client_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config) and "s3cr3t-value" not in str(config.spotify)
    monkeypatch.setenv("MOODBOX_SPOTIFY_CLIENT_SECRET", "")
    (message,) = _problems('[spotify]\nclient_secret = 5\n')
    assert "********" in message and "5" not in message.split("=", 1)[1].split(":")[0]
