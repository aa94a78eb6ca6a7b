"""The Spotify Connect player: spotipy behind the Player protocol.

spotipy's own retry is switched off by giving it a plain ``requests.Session``
(no urllib3 Retry mounted): its built-in retry sleeps through a 429's
Retry-After inside the call (up to an hour), and with ``retries=0`` alone it
hides the real status and the Retry-After header ("Max Retries", a 500
reported as 429). Here a 429 sets ``ready_in`` to its Retry-After, 5xx and
timeouts back off exponentially, and nothing ever sleeps.

Tokens: spotipy's JSON token cache at ``<state dir>/spotify_token.json``,
mode 0600, written atomically. The client gets the bare access token, so
spotipy can never fall into its interactive login prompt inside the daemon;
this module refreshes the token before it expires and once on a 401.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import requests
import spotipy
from spotipy.cache_handler import CacheHandler
from spotipy.exceptions import SpotifyException, SpotifyOauthError
from spotipy.oauth2 import SpotifyOAuth, SpotifyPKCE

from device.config import SpotifyConfig, secret
from device.music.player import Backoff, Health, Playback, Track

__all__ = ["SCOPES", "TOKEN_FILE", "SpotifyPlayer", "TokenStore", "auth_manager", "quiet_spotipy"]

log = logging.getLogger(__name__)

TOKEN_FILE = "spotify_token.json"
SCOPES = (
    "user-read-playback-state",
    "user-modify-playback-state",
    "user-read-currently-playing",
    "playlist-read-private",
    "playlist-read-collaborative",
    "user-read-private",
)
#: Player "errors" that mean the device is already where we wanted it.
_ALREADY = {"ALREADY_PAUSED", "ALREADY_PLAYING", "NOT_PAUSED"}
_RESTRICTED = {"DEVICE_NOT_CONTROLLABLE", "REMOTE_CONTROL_DISALLOW", "VOLUME_CONTROL_DISALLOW"}
#: Refresh the access token this long before it expires, seconds.
_EARLY_REFRESH_S = 60
_PAGE = 50

T = TypeVar("T")


def quiet_spotipy() -> None:
    """Keep spotipy's own log lines off.

    Its DEBUG lines print request headers (the bearer token, the Basic client
    secret) and token request bodies; its ERROR line per failed request repeats,
    once per retry, what ``health`` already reports.
    """
    logging.getLogger("spotipy").setLevel(logging.CRITICAL)


class TokenStore(CacheHandler):
    """spotipy's JSON token cache in one file, mode 0600 from the first byte.

    ``strict=False`` (the daemon's player) logs a failed save instead of raising:
    spotipy saves inside ``refresh_access_token``, and a raise there (a full
    disk) would lose the new token, and with PKCE its rotated refresh token.
    """

    def __init__(self, path: Path, strict: bool = True) -> None:
        self.path = path
        self.strict = strict

    def get_cached_token(self) -> dict[str, Any] | None:
        try:
            token = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("Spotify token file %s unreadable (%s): log in again", self.path, type(exc).__name__)
            return None
        if not isinstance(token, dict) or "access_token" not in token:
            log.warning("Spotify token file %s holds no token: log in again", self.path)
            return None
        return token

    def save_token_to_cache(self, token_info: dict[str, Any]) -> None:
        try:
            self._save(token_info)
        except OSError as exc:
            if self.strict:
                raise
            log.warning("cannot save the Spotify token in %s (%s); using it from memory", self.path, exc.strerror)

    def _save(self, token_info: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".token-")  # mkstemp creates it 0600
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(token_info, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None


def auth_manager(config: SpotifyConfig, store: TokenStore, session: requests.Session,
                 state: str | None = None) -> SpotifyOAuth | SpotifyPKCE:
    """spotipy's Authorization Code manager: with the client secret if there is one, else PKCE."""
    common: dict[str, Any] = dict(
        client_id=config.client_id, redirect_uri=config.redirect_uri, scope=list(SCOPES), state=state,
        cache_handler=store, requests_session=session, requests_timeout=config.timeout_s, open_browser=False,
    )
    client_secret = secret(config.client_secret)
    manager = SpotifyOAuth(client_secret=client_secret, **common) if client_secret else SpotifyPKCE(**common)
    # Class attributes in spotipy; set per instance so tests can point them at a fake server.
    manager.OAUTH_AUTHORIZE_URL = f"{config.accounts_base}/authorize"
    manager.OAUTH_TOKEN_URL = f"{config.accounts_base}/api/token"
    return manager


def _track(item: dict[str, Any] | None) -> Track | None:
    if not item or item.get("type", "track") != "track" or item.get("is_local") or not item.get("uri"):
        return None
    artists = ", ".join(a.get("name", "") for a in item.get("artists") or [] if a)
    album = (item.get("album") or {}).get("name", "")
    return Track(item["uri"], item.get("name", ""), artists, album, int(item.get("duration_ms") or 0))


class SpotifyPlayer:
    """Controls one Spotify Connect device through the Web API. Never raises, never sleeps."""

    def __init__(self, config: SpotifyConfig, state_dir: Path, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, backoff: Backoff | None = None) -> None:
        quiet_spotipy()
        self.config = config
        self.store = TokenStore(state_dir / TOKEN_FILE, strict=False)
        self._clock = clock
        self._wall = wall
        self._backoff = backoff or Backoff(2.0, config.backoff_max_s)
        self._ready_at = 0.0
        self._api = Health()  # login, rate limits, network
        self._playback = Health()  # premium, device
        self._client: spotipy.Spotify | None = None
        self._manager: SpotifyOAuth | SpotifyPKCE | None = None
        self._token: dict[str, Any] | None = None
        self._rejected_mtime: float | None = None  # token file that Spotify refused; wait for a new login
        self.device_id: str | None = None
        self.last_error = ""  # why the last call failed: auth, premium, restricted, device, not_found, ...

    # -- health ---------------------------------------------------------

    @property
    def health(self) -> Health:
        return self._api if self._api.state != "ok" else self._playback

    def ready_in(self) -> float:
        return max(0.0, self._ready_at - self._clock())

    def _wait(self, seconds: float) -> None:
        self._ready_at = self._clock() + seconds

    # -- tokens ---------------------------------------------------------

    def _session(self) -> requests.Session:
        """A plain session: no urllib3 Retry mounted, so 429s and 5xx come back as they are."""
        return requests.Session()

    def _ensure_token(self) -> bool:
        if not self.config.client_id:
            self._api = Health("login_needed", "set [spotify] client_id, then run: moodbox spotify login")
            return False
        if self._token is None:
            if self._rejected_mtime is not None and self.store.mtime() == self._rejected_mtime:
                return False
            self._token = self.store.get_cached_token()
            if self._token is None:
                self._api = Health("login_needed", "no Spotify login yet: run moodbox spotify login")
                return False
            self._client = None
        if float(self._token.get("expires_at", 0)) - self._wall() < _EARLY_REFRESH_S and not self._refresh():
            return False
        if self._client is None:
            self._client = spotipy.Spotify(
                auth=self._token["access_token"], requests_session=self._session(),
                requests_timeout=self.config.timeout_s, retries=0, status_retries=0,
            )
            self._client.prefix = self.config.api_base
        return True

    def _refresh(self) -> bool:
        """A new access token from the refresh token; False (with health set) when that fails."""
        token = self._token or {}
        if not token.get("refresh_token"):
            return self._rejected("the saved Spotify login has no refresh token")
        if self._manager is None:
            self._manager = auth_manager(self.config, self.store, self._session())
        try:
            self._token = self._manager.refresh_access_token(token["refresh_token"])
        except SpotifyOauthError as exc:
            if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client"):
                return self._rejected(f"Spotify refused the saved login ({exc.error})")
            self._network_failure(f"token refresh failed: {exc.error or 'no answer'}")
            return False
        except requests.RequestException as exc:
            self._network_failure(f"token refresh failed: {type(exc).__name__}")
            return False
        if self._client is not None:
            self._client.set_auth(self._token["access_token"])
        log.info("Spotify access token refreshed")
        return True

    def _rejected(self, why: str) -> bool:
        self._token, self._client = None, None
        self._rejected_mtime = self.store.mtime()
        self._api = Health("login_needed", f"{why}: run moodbox spotify login")
        self.last_error = "auth"
        return False

    # -- calls ----------------------------------------------------------

    def _network_failure(self, detail: str) -> None:
        delay = self._backoff.fail()
        self._wait(delay)
        self._api = Health("unreachable", f"{detail}; retrying in {delay:.0f} s")
        self.last_error = "unreachable"

    def _call(self, what: str, fn: Callable[[spotipy.Spotify], T], playback: bool = False) -> tuple[bool, T | None]:
        """Run one Web API request; map every failure to health, backoff and ``last_error``."""
        if self.ready_in() > 0 or not self._ensure_token():
            return False, None
        result: T | None = None
        for attempt in (1, 2):
            assert self._client is not None
            try:
                result = fn(self._client)
            except SpotifyException as exc:
                if exc.http_status == 401 and attempt == 1:
                    if not self._refresh():  # health already says why
                        return False, None
                    continue
                if not (exc.http_status == 403 and (exc.reason or "") in _ALREADY):
                    self._failed(what, exc, playback)
                    return False, None
            except requests.RequestException as exc:
                self._network_failure(f"{what}: {type(exc).__name__}")
                return False, None
            break
        self._backoff.reset()
        self._api = Health()
        if playback:
            self._playback = Health()
        self.last_error = ""
        return True, result

    def _failed(self, what: str, exc: SpotifyException, playback: bool) -> None:
        status, reason, message = exc.http_status, exc.reason or "", _message(exc)
        if status == 401:
            self._rejected(f"Spotify rejected the login on {what}")
        elif status == 403 and "not registered" in message.lower():
            self._api = Health("login_needed", "this Spotify account is not on the app's user allow-list "
                                               "(developer dashboard > User Management)")
            self.last_error = "auth"
        elif status == 403 and reason in _RESTRICTED:
            self._playback = Health("device_restricted", f"{self.config.device_name} cannot be remote-controlled")
            self.last_error = "restricted"
        elif status == 403 and playback:
            self._playback = Health("premium_required", "Spotify playback control needs a Premium account")
            self.last_error = "premium"
        elif status == 404 and playback and ("device" in message.lower() or reason == "NO_ACTIVE_DEVICE"):
            self.device_id = None
            self._playback = Health("device_missing", f"{self.config.device_name} is not available")
            self.last_error = "device"
        elif status == 429:
            wait = _retry_after(exc)
            delay = wait if wait is not None else self._backoff.fail()
            self._wait(delay)
            self._api = Health("rate_limited", f"Spotify asked to wait {delay:.0f} s")
            self.last_error = "rate_limited"
        elif status >= 500:
            self._network_failure(f"{what}: Spotify error {status}")
        else:
            self.last_error = "not_found" if status == 404 else "forbidden" if status == 403 else "bad_request"
            log.warning("Spotify %s failed: %s %s", what, status, message)

    # -- the Player protocol ---------------------------------------------

    def connect(self) -> bool:
        ok, found = self._call("devices", lambda c: c.devices())
        if not ok:
            return False
        devices = (found or {}).get("devices") or []
        wanted = self.config.device_name.casefold()
        device = next((d for d in devices if (d.get("name") or "").casefold() == wanted), None)
        if device is None:
            names = ", ".join(repr(d.get("name")) for d in devices) or "none"
            self.device_id = None
            self._playback = Health("device_missing", f"no device named {self.config.device_name!r} "
                                                      f"(Spotify sees: {names})")
            self.last_error = "device"
            return False
        if device.get("is_restricted"):
            self._playback = Health("device_restricted", f"{device.get('name')} cannot be remote-controlled")
            self.last_error = "restricted"
            return False
        self.device_id = device["id"]
        if not device.get("is_active"):
            ok, _ = self._call("transfer", lambda c: c.transfer_playback(self.device_id, force_play=False),
                               playback=True)
            return ok
        self._playback = Health()
        return True

    def _device_call(self, what: str, fn: Callable[[spotipy.Spotify, str], Any]) -> bool:
        if self.device_id is None and not self.connect():
            return False
        device = self.device_id
        ok, _ = self._call(what, lambda c: fn(c, device), playback=True)
        return ok

    def play(self, context_uri: str | None = None, uris: Sequence[str] | None = None) -> bool:
        return self._device_call("play", lambda c, d: c.start_playback(
            device_id=d, context_uri=context_uri, uris=list(uris) if uris is not None else None))

    def pause(self) -> bool:
        return self._device_call("pause", lambda c, d: c.pause_playback(device_id=d))

    def resume(self) -> bool:
        return self._device_call("resume", lambda c, d: c.start_playback(device_id=d))

    def next(self) -> bool:
        return self._device_call("next", lambda c, d: c.next_track(device_id=d))

    def set_volume(self, percent: int) -> bool:
        return self._device_call("volume", lambda c, d: c.volume(int(percent), device_id=d))

    def state(self) -> Playback | None:
        ok, found = self._call("state", lambda c: c.current_playback(additional_types="track"))
        if not ok:
            return None
        if not found:  # 204: no active device
            return Playback(is_playing=False)
        device = found.get("device") or {}
        return Playback(
            is_playing=bool(found.get("is_playing")),
            track=_track(found.get("item")),
            progress_ms=int(found.get("progress_ms") or 0),
            context_uri=(found.get("context") or {}).get("uri"),
            device_id=device.get("id"),
            device_name=device.get("name") or "",
            volume=device.get("volume_percent"),
        )

    def playlist_items(self, uri: str) -> list[Track] | None:
        ok, page = self._call("playlist", lambda c: c.playlist_items(uri, limit=_PAGE, additional_types=("track",)))
        tracks: list[Track] = []
        while ok and page:
            for entry in page.get("items") or []:
                # Since February 2026 the track sits in "item"; older responses call it "track".
                track = _track((entry or {}).get("item") or (entry or {}).get("track"))
                if track is not None:
                    tracks.append(track)
            if not page.get("next"):
                return tracks
            current = page
            ok, page = self._call("playlist", lambda c: c.next(current))
        return None if not ok else tracks

    def me(self) -> dict[str, Any] | None:
        ok, found = self._call("me", lambda c: c.me())
        return found if ok else None

    def devices(self) -> list[dict[str, Any]] | None:
        """The Connect devices Spotify sees, read-only (no transfer); None when the call failed (see health)."""
        ok, found = self._call("devices", lambda c: c.devices())
        return list((found or {}).get("devices") or []) if ok else None


def _message(exc: SpotifyException) -> str:
    # spotipy prefixes the URL ("https://.../v1/me/player/play:\n message"); keep the message.
    return str(exc.msg).split(":\n", 1)[-1].strip()


def _retry_after(exc: SpotifyException) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return max(1.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare; fall back to our own backoff
        return None
