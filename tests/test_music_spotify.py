"""The spotipy adapter against the fake Spotify server, with the real spotipy client."""

from __future__ import annotations

import base64
import json
import logging
import stat

import pytest
import requests
import spotipy
from spotipy.cache_handler import CacheFileHandler

from device.music.cli import LoginError, login
from device.music.spotify import TOKEN_FILE, SpotifyPlayer
from device.config import Config
from fake_spotify import CLIENT_ID, CLIENT_SECRET, FakeSpotify, ManualClock

CALM = "spotify:playlist:calm"


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def fake(clock):
    with FakeSpotify(clock) as server:
        server.add_playlist(CALM, tracks=120)
        yield server


@pytest.fixture
def player(fake, tmp_path, clock):
    fake.add_device("Moodbox")
    fake.login(tmp_path)
    return SpotifyPlayer(fake.spotify_config(), tmp_path, clock=clock)


def _box_config(fake, tmp_path, **spotify):
    return Config().model_copy(update={"spotify": fake.spotify_config(**spotify),
                                       "state": Config().state.model_copy(update={"dir": str(tmp_path)})})


# -- spotipy's retry, pinned -------------------------------------------------------


def test_spotipy_default_retry_hides_status_and_retry_after_but_own_session_does_not(fake, tmp_path):
    """Why SpotifyPlayer passes its own requests.Session (issue 4, checked with spotipy 2.26)."""
    token = fake.login(tmp_path)["access_token"]
    seen = {}
    for label, kwargs in (("retries=0", {"retries": 0}), ("session", {"requests_session": requests.Session()})):
        for status in (429, 500):
            fake.fail("/v1/me", status, retry_after=7 if status == 429 else None)
            client = spotipy.Spotify(auth=token, **kwargs)
            client.prefix = fake.url + "/v1/"
            with pytest.raises(spotipy.SpotifyException) as caught:
                client.me()
            seen[label, status] = (caught.value.http_status, (caught.value.headers or {}).get("Retry-After"))
    assert seen["retries=0", 429] == (429, None)  # Retry-After lost
    assert seen["retries=0", 500] == (429, None)  # a 500 reported as a 429
    assert seen["session", 429] == (429, "7")
    assert seen["session", 500] == (500, None)


# -- login ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [CLIENT_SECRET, ""], ids=["client-secret", "pkce"])
def test_headless_login_with_a_pasted_url(fake, tmp_path, secret):
    config = _box_config(fake, tmp_path, client_secret=secret)
    printed: list[str] = []

    def paste(prompt: str) -> str:  # the person opens the printed link elsewhere and pastes the result
        link = next(word for line in printed for word in line.split() if word.startswith(fake.url + "/authorize"))
        return fake.agree(link)

    account = login(config, tmp_path, read_line=paste, write=printed.append)
    assert account["display_name"] == "Test Listener"
    token_file = tmp_path / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = CacheFileHandler(cache_path=str(token_file)).get_cached_token()  # spotipy's own format
    assert token["access_token"] in fake.access_tokens and token["expires_at"] > 0
    (exchange,) = fake.calls("POST", "/api/token")
    if secret:
        assert "code_verifier" not in exchange.body
    else:
        assert exchange.body["code_verifier"] and exchange.body["client_id"] == CLIENT_ID


def test_login_refuses_a_foreign_or_cancelled_redirect(fake, tmp_path):
    config = _box_config(fake, tmp_path)
    cases = {
        "http://127.0.0.1:8888/callback?error=access_denied&state=x": "did you press Cancel",
        "http://127.0.0.1:8888/callback?code=abc&state=someone-else": "another login attempt",
        "http://example.com/callback?code=abc": "not the redirect address",
        "": "nothing pasted",
    }
    for pasted, message in cases.items():
        with pytest.raises(LoginError, match=message):
            login(config, tmp_path, read_line=lambda prompt: pasted, write=lambda text: None)
    assert not (tmp_path / TOKEN_FILE).exists()
    assert fake.count("POST", "/api/token") == 0


def test_login_needs_a_client_id(fake, tmp_path):
    with pytest.raises(LoginError, match="client_id"):
        login(_box_config(fake, tmp_path, client_id=""), tmp_path, read_line=lambda p: "", write=lambda t: None)


# -- devices ------------------------------------------------------------------------


def test_device_found_by_name_and_playback_transferred(fake, player):
    fake.add_device("Kitchen", active=True)
    assert player.connect()
    assert player.health.state == "ok"
    (transfer,) = fake.calls("PUT", "/v1/me/player")
    assert transfer.body == {"device_ids": [player.device_id], "play": False}
    assert player.play(context_uri=CALM)
    (play,) = fake.calls("PUT", "/v1/me/player/play")
    assert play.query["device_id"] == player.device_id and play.body == {"context_uri": CALM}
    state = player.state()
    assert state.is_playing and state.device_name == "Moodbox" and state.track.name == "calm song 1"
    assert state.context_uri == CALM


def test_missing_device_is_reported_then_found(fake, tmp_path, clock):
    fake.add_device("Kitchen")
    fake.login(tmp_path)
    player = SpotifyPlayer(fake.spotify_config(), tmp_path, clock=clock)
    assert not player.play(context_uri=CALM)
    assert player.health.state == "device_missing" and "'Kitchen'" in player.health.detail
    assert fake.count("PUT", "/v1/me/player/play") == 0
    fake.add_device("moodbox")  # raspotify logged in
    assert player.play(context_uri=CALM) and player.health.state == "ok"


def test_restricted_device(fake, tmp_path, clock):
    fake.add_device("moodbox", restricted=True)
    fake.login(tmp_path)
    player = SpotifyPlayer(fake.spotify_config(), tmp_path, clock=clock)
    assert not player.connect()
    assert player.health.state == "device_restricted"


def test_device_gone_mid_session_is_device_missing(fake, player):
    assert player.play(context_uri=CALM)
    fake.remove_device("Moodbox")
    assert not player.next()
    assert player.health.state == "device_missing" and player.device_id is None


# -- tokens -------------------------------------------------------------------------


def test_401_refreshes_the_token_once_and_retries(fake, player, tmp_path):
    assert player.state() is not None
    before = json.loads((tmp_path / TOKEN_FILE).read_text())["access_token"]
    fake.expire_access_tokens()
    assert player.state() is not None and player.health.state == "ok"
    assert fake.count("POST", "/api/token") == 1
    after = json.loads((tmp_path / TOKEN_FILE).read_text())
    assert after["access_token"] != before and after["access_token"] in fake.access_tokens
    assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600


def test_token_refreshed_before_it_expires(fake, tmp_path, clock):
    fake.add_device("moodbox")
    fake.login(tmp_path, expires_in=30)  # within the early-refresh window
    player = SpotifyPlayer(fake.spotify_config(), tmp_path, clock=clock)
    assert player.state() is not None
    assert fake.count("POST", "/api/token") == 1
    assert [r.status for r in fake.requests if r.path.startswith("/v1/")] == [204]  # no 401 first


def test_revoked_token_is_login_needed_and_waits_for_a_new_login(fake, player, tmp_path):
    fake.revoke()
    assert player.state() is None
    assert player.health.state == "login_needed" and "moodbox spotify login" in player.health.detail
    sent = len(fake.requests)
    for _ in range(5):
        assert player.state() is None
    assert len(fake.requests) == sent  # no hammering with a dead token
    fake.login(tmp_path)  # the person logged in again
    assert player.state() is not None and player.health.state == "ok"


def test_no_login_yet(fake, tmp_path, clock):
    player = SpotifyPlayer(fake.spotify_config(), tmp_path, clock=clock)
    assert not player.connect()
    assert player.health.state == "login_needed"
    assert fake.requests == []


# -- errors -------------------------------------------------------------------------


def test_403_on_playback_is_premium_required(fake, player):
    fake.premium = False
    assert player.connect() is False  # the transfer is a player command too
    assert player.health.state == "premium_required"
    assert player.state() is not None  # reading still works
    assert player.health.state == "premium_required"  # and does not hide the problem
    fake.premium = True
    assert player.play(context_uri=CALM) and player.health.state == "ok"


def test_already_paused_is_not_an_error(fake, player):
    assert player.connect()
    assert player.pause() and player.health.state == "ok"


def test_429_honours_retry_after_without_sleeping(fake, player, clock):
    fake.fail("/v1/me/player", 429, retry_after=30)
    assert player.state() is None
    assert player.health.state == "rate_limited" and player.ready_in() == 30
    sent = len(fake.requests)
    clock.advance(29)
    assert player.state() is None and len(fake.requests) == sent
    clock.advance(1)
    assert player.state() is not None and player.health.state == "ok"


def test_5xx_backs_off_exponentially_and_recovers(fake, player, clock):
    fake.fail("/v1/me/player", 503, times=3)
    waits = []
    for _ in range(3):
        assert player.state() is None
        assert player.health.state == "unreachable" and "503" in player.health.detail
        waits.append(player.ready_in())
        clock.advance(waits[-1])
    assert waits[0] < waits[1] < waits[2]
    assert player.state() is not None and player.health.state == "ok"
    fake.fail("/v1/me/player", 502)
    assert player.state() is None and player.ready_in() < waits[1]  # success reset the backoff


def test_slow_response_times_out(fake, tmp_path, clock):
    fake.add_device("moodbox")
    fake.login(tmp_path)
    player = SpotifyPlayer(fake.spotify_config(timeout_s=0.3), tmp_path, clock=clock)
    fake.fail("/v1/me/player", delay_s=3.0)
    assert player.state() is None
    assert player.health.state == "unreachable" and "Timeout" in player.health.detail


def test_dropped_connection_and_dead_server_are_unreachable(fake, player, clock):
    fake.fail("/v1/me/player", drop=True)
    assert player.state() is None and player.health.state == "unreachable"
    clock.advance(player.ready_in())
    fake.stop()
    assert player.state() is None and player.health.state == "unreachable"


# -- playlists ------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["item", "legacy-track"])
def test_playlist_items_are_paged_from_the_items_endpoint(fake, player, legacy):
    fake.legacy_items = legacy
    tracks = player.playlist_items(CALM)
    assert len(tracks) == 120 and tracks[0].name == "calm song 1" and tracks[-1].uri == "spotify:track:calm119"
    pages = fake.calls("GET", "/v1/playlists/calm/items")
    assert [int(p.query["offset"]) for p in pages] == [0, 50, 100]
    assert fake.count(path="/v1/playlists/calm/tracks") == 0


def test_playlist_read_failure_mid_paging_returns_none(fake, player):
    fake.fail("/v1/playlists/calm/items", 500, times=1)
    assert player.playlist_items(CALM) is None
    assert player.playlist_items("spotify:playlist:unknown") is None


# -- secrets in logs ---------------------------------------------------------------------


@pytest.mark.parametrize("secret", [CLIENT_SECRET, ""], ids=["client-secret", "pkce"])
def test_no_token_or_secret_in_any_log_line(fake, tmp_path, clock, caplog, secret):
    """A whole session at DEBUG: login, discovery, playback, refresh, errors, revocation."""
    caplog.set_level(logging.DEBUG)
    fake.add_device("moodbox")
    config = _box_config(fake, tmp_path, client_secret=secret)
    printed: list[str] = []
    link = lambda: next(w for line in printed for w in line.split() if w.startswith(fake.url + "/authorize"))  # noqa: E731
    login(config, tmp_path, read_line=lambda prompt: fake.agree(link()), write=printed.append)
    player = SpotifyPlayer(config.spotify, tmp_path, clock=clock)
    assert player.play(context_uri=CALM) and player.playlist_items(CALM)
    fake.expire_access_tokens()
    assert player.next() and player.state().is_playing
    fake.fail("/v1/me/player/pause", 500)
    assert not player.pause()
    clock.advance(player.ready_in())
    fake.fail("/v1/me/player/volume", 429, retry_after=5)
    assert not player.set_volume(40)
    clock.advance(5)
    fake.revoke()
    assert player.state() is None and player.health.state == "login_needed"

    lines = [record.getMessage() for record in caplog.records]
    lines += [str(record.args) for record in caplog.records]
    lines += [caplog.text]
    secrets = set(fake.issued) | {base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()}
    assert len(fake.issued) >= 6  # secret, code, tokens of the login and of the refresh
    assert len(caplog.records) > 5  # the session did log (refresh, errors)
    for line in lines:
        for value in secrets:
            assert value not in line


def test_an_account_off_the_allow_list_is_login_needed(fake, player):
    fake.fail("/v1/me/player", 403, message="User not registered in the Developer Dashboard")
    assert player.state() is None
    assert player.health.state == "login_needed" and "allow-list" in player.health.detail


def test_a_forbidden_playlist_read_is_not_a_premium_problem(fake, player):
    fake.fail("/v1/playlists/calm/items", 403, message="Forbidden")
    assert player.playlist_items(CALM) is None
    assert player.health.state == "ok" and player.last_error == "forbidden"


def test_429_without_retry_after_backs_off_on_its_own(fake, player):
    fake.fail("/v1/me/player", 429)
    assert player.state() is None
    assert player.health.state == "rate_limited" and player.ready_in() > 0
