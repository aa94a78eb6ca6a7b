"""A fake Spotify Web API and accounts service on 127.0.0.1, for the real spotipy client.

Small API, shared by the music, soak and fault tests::

    with FakeSpotify() as spotify:                # starts on a free port
        spotify.add_device("moodbox")
        spotify.add_playlist("spotify:playlist:calm", tracks=30)
        config = spotify.spotify_config()         # SpotifyConfig pointing at it
        spotify.login(state_dir)                  # a valid token file, as after `moodbox spotify login`
        spotify.fail("/v1/me/player*", 429, times=3, retry_after=2)
        spotify.count("PUT", "/v1/me/player/play")

It serves the token endpoint (authorization code with client secret or
PKCE, refresh), /authorize (redirects like a browser after "Agree"), /me,
devices, transfer, play, pause, next, volume, player state, and playlist
items with paging. Faults: any status (401/403/404/429 with Retry-After/5xx),
slow responses, dropped connections, requests held until released, revoked
or expired tokens. Playback runs on ``clock`` (a ManualClock makes track
ends exact).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from device.config import SpotifyConfig
from device.music.player import PlaybackSim, Track
from device.music.spotify import SCOPES, TOKEN_FILE, TokenStore

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "Fault", "FakeSpotify", "ManualClock", "Request"]

CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret-do-not-log"


class ManualClock:
    """A clock that moves only when told: share one between the fake server and the code under test."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Fault:
    """Answer matching requests with ``status`` (or delay, drop, hold them), ``times`` times (None: forever)."""

    path: str  # fnmatch pattern on the path, e.g. "/v1/me/player*"
    status: int | None = None
    method: str | None = None
    times: int | None = 1
    retry_after: int | None = None
    reason: str | None = None
    message: str = ""
    delay_s: float = 0.0  # answer this late (slow responses, timeouts)
    drop: bool = False  # close the connection without an answer
    gate: threading.Event | None = None  # hold the request until the event is set
    held: threading.Event = field(default_factory=threading.Event)  # set once a request is being held

    def matches(self, method: str, path: str) -> bool:
        return (self.method in (None, method)) and fnmatch.fnmatchcase(path, self.path) and self.times != 0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    status: int


class FakeSpotify:
    def __init__(self, clock: Callable[[], float] = time.monotonic, *, premium: bool = True, page_limit: int = 50,
                 legacy_items: bool = False) -> None:
        self.clock = clock
        self.premium = premium
        self.page_limit = page_limit
        self.legacy_items = legacy_items  # playlist items under "track" (before February 2026) instead of "item"
        self.user = {"id": "tester", "display_name": "Test Listener", "country": "GB"}
        self.tracks: dict[str, Track] = {}
        self.playlists: dict[str, list[str]] = {}
        self.devices: list[dict[str, Any]] = []
        self.active_device: str | None = None
        self.sim = PlaybackSim(clock)
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.access_tokens: set[str] = set()
        self.refresh_tokens: set[str] = set()
        self.issued: list[str] = [CLIENT_SECRET]  # every secret this server handed out, for log checks
        self._codes: dict[str, dict[str, str]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-spotify",
                                        daemon=True)

    # -- lifecycle ------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeSpotify:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for fault in self.faults:
            if fault.gate is not None:
                fault.gate.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSpotify:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spotify_config(self, **overrides: Any) -> SpotifyConfig:
        values: dict[str, Any] = dict(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, device_name="moodbox",
                                      api_base=f"{self.url}/v1/", accounts_base=self.url, timeout_s=2.0)
        values.update(overrides)
        return SpotifyConfig(**values)

    # -- catalogue and devices --------------------------------------------

    def add_playlist(self, uri: str, tracks: int = 20, duration_ms: int = 180_000, name: str = "") -> list[Track]:
        label = name or uri.rsplit(":", 1)[-1]
        made = [Track(f"spotify:track:{uri.rsplit(':', 1)[-1]}{i:03d}", f"{label} song {i + 1}", f"Artist {i % 5}",
                      f"{label} album", duration_ms) for i in range(tracks)]
        with self._lock:
            self.tracks.update({t.uri: t for t in made})
            self.playlists[uri] = [t.uri for t in made]
        return made

    def add_device(self, name: str, *, restricted: bool = False, active: bool = False,
                   device_type: str = "Speaker") -> dict[str, Any]:
        device = {"id": hashlib.sha1(name.encode()).hexdigest(), "name": name, "type": device_type,
                  "is_restricted": restricted, "is_private_session": False, "supports_volume": True}
        with self._lock:
            self.devices.append(device)
            if active:
                self.active_device = device["id"]
        return device

    def remove_device(self, name: str) -> None:
        with self._lock:
            gone = [d["id"] for d in self.devices if d["name"] == name]
            self.devices = [d for d in self.devices if d["name"] != name]
            if self.active_device in gone:
                self.active_device = None
                self.sim.pause()

    # -- accounts ---------------------------------------------------------

    def login(self, state_dir: Path, expires_in: int = 3600) -> dict[str, Any]:
        """Write a token file as ``moodbox spotify login`` would, with tokens this server accepts."""
        token = self._issue(expires_in)
        token["expires_at"] = int(time.time()) + expires_in
        TokenStore(state_dir / TOKEN_FILE).save_token_to_cache(token)
        return token

    def agree(self, authorize_url: str) -> str:
        """What a person's browser does with the login link: open it, press Agree; returns the redirected address."""
        answer = requests.get(authorize_url, allow_redirects=False, timeout=5)
        if answer.status_code != 302:
            raise AssertionError(f"authorize refused: {answer.status_code} {answer.text}")
        return answer.headers["Location"]

    def revoke(self) -> None:
        """The user removed the app's access: every token stops working."""
        with self._lock:
            self.access_tokens.clear()
            self.refresh_tokens.clear()

    def expire_access_tokens(self) -> None:
        """Access tokens die early (the refresh token still works): the next call gets a 401."""
        with self._lock:
            self.access_tokens.clear()

    def _issue(self, expires_in: int = 3600) -> dict[str, Any]:
        access, refresh = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.access_tokens.add(access)
            self.refresh_tokens.add(refresh)
            self.issued += [access, refresh]
        return {"access_token": access, "token_type": "Bearer", "expires_in": expires_in,
                "refresh_token": refresh, "scope": " ".join(SCOPES)}

    # -- faults and records -------------------------------------------------

    def fail(self, path: str, status: int | None = None, **kwargs: Any) -> Fault:
        """Add a fault (see :class:`Fault`); faults are checked in the order they were added."""
        fault = Fault(path, status, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            for fault in self.faults:
                if fault.gate is not None:
                    fault.gate.set()
            self.faults.clear()

    def count(self, method: str | None = None, path: str = "*") -> int:
        with self._lock:
            return sum(1 for r in self.requests if method in (None, r.method) and fnmatch.fnmatchcase(r.path, path))

    def calls(self, method: str | None = None, path: str = "*") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if method in (None, r.method) and fnmatch.fnmatchcase(r.path, path)]

    # -- the service ------------------------------------------------------------

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def serve(self, method: str, path: str, query: dict[str, str], body: Any,
              headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        if path == "/authorize":
            return self._authorize(query)
        if path == "/api/token":
            return self._token(body if isinstance(body, dict) else {}, headers)
        if not path.startswith("/v1/"):
            return _error(404, "Service not found")
        bearer = headers.get("authorization", "")
        with self._lock:
            if not bearer.startswith("Bearer ") or bearer[7:] not in self.access_tokens:
                return _error(401, "The access token expired" if bearer else "No token provided")
            return self._api(method, path[3:], query, body if isinstance(body, dict) else {})

    def _authorize(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        if query.get("client_id") != CLIENT_ID:
            return 400, "INVALID_CLIENT: Invalid client", {}
        redirect = query.get("redirect_uri", "")
        if query.get("response_type") != "code" or not redirect:
            return 400, "Invalid request", {}
        code = "code-" + secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = {"redirect_uri": redirect, "challenge": query.get("code_challenge", "")}
            self.issued.append(code)
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        return 302, "", {"Location": f"{redirect}?{urlencode(params)}"}

    def _token(self, form: dict[str, str], headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        basic = headers.get("authorization", "")
        with_secret = basic == "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if basic and not with_secret:
            return 400, {"error": "invalid_client", "error_description": "Invalid client secret"}, {}
        if form.get("code_verifier"):
            with self._lock:
                self.issued.append(form["code_verifier"])
        if not with_secret and form.get("client_id") != CLIENT_ID:
            return 400, {"error": "invalid_client", "error_description": "Invalid client"}, {}
        grant = form.get("grant_type")
        with self._lock:
            if grant == "authorization_code":
                issued = self._codes.pop(form.get("code", ""), None)
                if issued is None or issued["redirect_uri"] != form.get("redirect_uri"):
                    return 400, {"error": "invalid_grant", "error_description": "Invalid authorization code"}, {}
                if not with_secret:
                    verifier = form.get("code_verifier", "")
                    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                    if not issued["challenge"] or digest != issued["challenge"]:
                        return 400, {"error": "invalid_grant", "error_description": "code_verifier was incorrect"}, {}
                return 200, self._issue(), {}
            if grant == "refresh_token":
                if form.get("refresh_token") not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant", "error_description": "Refresh token revoked"}, {}
                token = self._issue()
                if with_secret:  # like Spotify: the secret flow keeps its refresh token, PKCE rotates it
                    self.refresh_tokens.discard(token.pop("refresh_token"))
                else:
                    self.refresh_tokens.discard(form["refresh_token"])
                return 200, token, {}
        return 400, {"error": "unsupported_grant_type"}, {}

    def _device(self, device_id: str | None) -> dict[str, Any] | None:
        wanted = device_id or self.active_device
        return next((d for d in self.devices if d["id"] == wanted), None)

    def _api(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any, dict]:
        if (method, path) == ("GET", "/me"):
            return 200, {**self.user, "product": "premium" if self.premium else "free"}, {}
        if (method, path) == ("GET", "/me/player/devices"):
            volume = self.sim.volume
            return 200, {"devices": [{**d, "is_active": d["id"] == self.active_device,
                                      "volume_percent": volume} for d in self.devices]}, {}
        if (method, path) == ("GET", "/me/player"):
            return self._player_state()
        if path.startswith("/playlists/"):
            return self._playlist(method, path, query)
        if not path.startswith("/me/player"):
            return _error(404, "Service not found")
        if not self.premium:
            return _error(403, "Player command failed: Premium required", "PREMIUM_REQUIRED")
        if (method, path) == ("PUT", "/me/player"):
            device = self._device((body.get("device_ids") or [None])[0])
            if device is None:
                return _error(404, "Device not found")
            if device["is_restricted"]:
                return _error(403, "Player command failed: Restriction violated", "DEVICE_NOT_CONTROLLABLE")
            self.active_device = device["id"]
            if body.get("play"):
                self.sim.resume()
            return 204, None, {}
        device = self._device(query.get("device_id"))
        if device is None:
            if query.get("device_id"):
                return _error(404, "Device not found")
            return _error(404, "Player command failed: No active device found", "NO_ACTIVE_DEVICE")
        if device["is_restricted"]:
            return _error(403, "Player command failed: Restriction violated", "DEVICE_NOT_CONTROLLABLE")
        self.active_device = device["id"]
        if (method, path) == ("PUT", "/me/player/play"):
            return self._play(body)
        if (method, path) == ("PUT", "/me/player/pause"):
            if not self.sim.playing:
                return _error(403, "Player command failed: Already paused", "ALREADY_PAUSED")
            self.sim.pause()
            return 204, None, {}
        if (method, path) == ("POST", "/me/player/next"):
            self.sim.next()
            return 204, None, {}
        if (method, path) == ("PUT", "/me/player/volume"):
            try:
                volume = int(query.get("volume_percent", ""))
            except ValueError:
                return _error(400, "Invalid volume")
            self.sim.volume = max(0, min(100, volume))
            return 204, None, {}
        return _error(405, "Method not allowed")

    def _play(self, body: dict[str, Any]) -> tuple[int, Any, dict]:
        if body.get("context_uri"):
            uris = self.playlists.get(body["context_uri"])
            if uris is None:
                return _error(404, "Not found.")
            self.sim.load([self.tracks[u] for u in uris], body["context_uri"],
                          int((body.get("offset") or {}).get("position", 0)))
        elif body.get("uris") is not None:
            unknown = [u for u in body["uris"] if u not in self.tracks]
            if unknown or not body["uris"]:
                return _error(400, "Invalid track uri")
            self.sim.load([self.tracks[u] for u in body["uris"]])
        elif not self.sim.resume():
            return _error(404, "Player command failed: No active device found", "NO_ACTIVE_DEVICE")
        return 204, None, {}

    def _player_state(self) -> tuple[int, Any, dict]:
        device = self._device(None)
        if device is None:
            return 204, None, {}
        state = self.sim.snapshot()
        track = state.track
        return 200, {
            "device": {**device, "is_active": True, "volume_percent": state.volume},
            "shuffle_state": False, "repeat_state": "off", "timestamp": int(time.time() * 1000),
            "context": {"uri": state.context_uri, "type": "playlist"} if state.context_uri else None,
            "progress_ms": state.progress_ms if track else None,
            "is_playing": state.is_playing,
            "item": _track_json(track) if track else None,
            "currently_playing_type": "track" if track else "unknown",
        }, {}

    def _playlist(self, method: str, path: str, query: dict[str, str]) -> tuple[int, Any, dict]:
        parts = path.split("/")  # "", "playlists", id, "items"
        if len(parts) != 4 or method != "GET":
            return _error(404, "Service not found")
        if parts[3] == "tracks":  # removed for development-mode apps in 2026
            return _error(403, "Forbidden")
        uris = self.playlists.get(f"spotify:playlist:{parts[2]}")
        if parts[3] != "items" or uris is None:
            return _error(404, "Not found.")
        try:
            limit, offset = int(query.get("limit", 20)), int(query.get("offset", 0))
        except ValueError:
            return _error(400, "Invalid limit or offset")
        if not 1 <= limit <= self.page_limit or offset < 0:
            return _error(400, "Invalid limit")
        key = "track" if self.legacy_items else "item"
        page = [{"added_at": "2025-01-01T00:00:00Z", "is_local": False, key: _track_json(self.tracks[u])}
                for u in uris[offset:offset + limit]]
        base = f"{self.url}/v1{path}"
        following = offset + limit < len(uris)
        return 200, {
            "href": f"{base}?offset={offset}&limit={limit}", "items": page, "limit": limit, "offset": offset,
            "total": len(uris), "previous": None,
            "next": f"{base}?offset={offset + limit}&limit={limit}" if following else None,
        }, {}


def _track_json(track: Track) -> dict[str, Any]:
    return {"type": "track", "uri": track.uri, "id": track.id, "name": track.name, "duration_ms": track.duration_ms,
            "is_local": False, "album": {"name": track.album},
            "artists": [{"name": name} for name in track.artists.split(", ") if name]}


def _error(status: int, message: str, reason: str | None = None) -> tuple[int, Any, dict]:
    error: dict[str, Any] = {"status": status, "message": message}
    if reason:
        error["reason"] = reason
    return status, {"error": error}, {}


def _handler(fake: FakeSpotify) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _handle(self) -> None:
            arrived = time.monotonic()
            split = urlsplit(self.path)
            path = split.path.rstrip("/") or "/"  # spotipy asks for "me/"
            query = dict(parse_qsl(split.query))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: Any = None
            if raw:
                if "json" in (self.headers.get("Content-Type") or ""):
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode(errors="replace")
                else:
                    body = dict(parse_qsl(raw.decode()))
            headers = {k.lower(): v for k, v in self.headers.items()}
            fault = fake._fault_for(self.command, path)
            if fault is not None and fault.gate is not None:
                fault.held.set()
                while not fault.gate.wait(0.05) and not fake._stop.is_set():
                    pass
            if fault is not None and fault.delay_s:
                fake._stop.wait(fault.delay_s)
            if fault is not None and fault.drop:
                self._record(arrived, path, query, body, 0)
                self.close_connection = True
                return
            if fault is not None and fault.status is not None:
                status, payload, extra = _error(fault.status, fault.message or f"fault {fault.status}", fault.reason)
                if fault.retry_after is not None:
                    extra = {"Retry-After": str(fault.retry_after)}
            else:
                status, payload, extra = fake.serve(self.command, path, query, body, headers)
            self._record(arrived, path, query, body, status)
            self._reply(status, payload, extra)

        def _record(self, arrived: float, path: str, query: dict[str, str], body: Any, status: int) -> None:
            with fake._lock:
                fake.requests.append(Request(self.command, path, query, body, arrived, status))

        def _reply(self, status: int, payload: Any, extra: dict[str, str]) -> None:
            data = b"" if payload is None else (
                payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
            try:
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                if data:
                    self.send_header("Content-Type", "application/json" if not isinstance(payload, str)
                                     else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        do_GET = do_PUT = do_POST = do_DELETE = _handle

    return Handler
