"""``moodbox spotify login`` (headless) and ``moodbox history``."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import requests
from spotipy.oauth2 import SpotifyOAuth

from device.config import Config, load_config_or_exit
from device.music.spotify import TOKEN_FILE, SpotifyPlayer, TokenStore, auth_manager, quiet_spotipy

__all__ = ["LoginError", "login", "register"]

log = logging.getLogger(__name__)


class LoginError(Exception):
    """The login did not work; the message says what to do."""


def _code_from(pasted: str, redirect_uri: str, state: str) -> str:
    """The authorization code in the address the browser was sent to, checked against what we asked for."""
    text = pasted.strip()
    if not text:
        raise LoginError("nothing pasted")
    parts = urlsplit(text)
    expected = urlsplit(redirect_uri)
    if (parts.scheme, parts.netloc, parts.path) != (expected.scheme, expected.netloc, expected.path):
        raise LoginError(f"that is not the redirect address: it should start with {redirect_uri}?")
    query = dict(parse_qsl(parts.query))
    if "error" in query:
        raise LoginError(f"Spotify said {query['error']!r} (did you press Cancel?); run the login again")
    if query.get("state") != state:
        raise LoginError("that address belongs to another login attempt; use the link printed above")
    if not query.get("code"):
        raise LoginError("the address has no code; paste the whole address from the browser's address bar")
    return query["code"]


def login(config: Config, state_dir: Path, read_line: Callable[[str], str] | None = None,
          write: Callable[[str], None] = print) -> dict:
    """The headless Authorization Code login: print the link, take the pasted redirect, save the token.

    Returns the account (``/me``). Raises LoginError with a message for a person.
    """
    quiet_spotipy()
    spotify = config.spotify
    if not spotify.client_id:
        raise LoginError("set [spotify] client_id in the config first (developer.spotify.com > your app > "
                         f"Settings), and register the redirect URI {spotify.redirect_uri} there")
    state = secrets.token_urlsafe(16)
    store = TokenStore(state_dir / TOKEN_FILE)
    manager = auth_manager(spotify, store, requests.Session(), state=state)
    flow = "client secret" if isinstance(manager, SpotifyOAuth) else "PKCE"
    write(f"1. Open this link on a phone or laptop and agree ({flow} login):\n\n   {manager.get_authorize_url()}\n")
    write(f"2. The browser then tries to open {spotify.redirect_uri}?code=... and shows an error page;\n"
          "   that is expected. Copy the whole address from its address bar.\n")
    pasted = (read_line or input)("3. Paste the address here: ")
    code = _code_from(pasted, spotify.redirect_uri, state)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(manager, SpotifyOAuth):
            manager.get_access_token(code, as_dict=False, check_cache=False)
        else:
            manager.get_access_token(code, check_cache=False)
    except requests.RequestException as exc:
        raise LoginError(f"cannot reach Spotify's accounts service: {type(exc).__name__}") from None
    except Exception as exc:  # spotipy's SpotifyOauthError carries Spotify's error text, never the code
        raise LoginError(f"Spotify refused the login: {getattr(exc, 'error', '') or exc}") from None
    account = SpotifyPlayer(spotify, state_dir).me()
    if account is None:
        raise LoginError(f"logged in, but reading the account failed; token saved in {store.path}")
    return account


def cmd_login(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    state_dir = config.resolve(config.state.dir)
    try:
        account = login(config, state_dir)
    except LoginError as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("\nlogin cancelled", file=sys.stderr)
        return 1
    name = account.get("display_name") or account.get("id", "?")
    print(f"Logged in as {name}; token saved in {state_dir / TOKEN_FILE} (mode 0600).")
    if account.get("product") not in (None, "premium"):
        print("Warning: this account is not Premium; Spotify only lets Premium accounts control playback.",
              file=sys.stderr)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from device.music.history import read_history

    config = load_config_or_exit(args.config)
    path = config.resolve(config.state.dir) / "history.sqlite"
    try:
        frame = read_history(path, "moods" if args.moods else "tracks")
    except (FileNotFoundError, OSError) as exc:
        print(f"history: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # sqlite3.DatabaseError and the like: say it, don't trace
        print(f"history: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        out = sys.stdout if args.csv == "-" else args.csv
        frame.to_csv(out, index=False)
        if args.csv != "-":
            print(f"{len(frame)} rows written to {args.csv}")
        return 0
    if frame.empty:
        print("no history yet")
        return 0
    if args.moods:
        shown = frame[["at", "mood", "confidence", "override"]]
    else:
        shown = frame[["started", "track", "playlist", "policy", "mood_before", "mood_after", "improved", "feedback"]]
    print(shown.tail(args.last).to_string(index=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    spotify = subparsers.add_parser("spotify", help="Spotify account tools")
    spotify_sub = spotify.add_subparsers(dest="spotify_command", required=True)
    login_parser = spotify_sub.add_parser("login", help="log in headless: open a link elsewhere, paste the result")
    login_parser.add_argument("--config", help="config file (default /etc/moodbox/config.toml, else the repo's)")
    login_parser.set_defaults(func=cmd_login)

    history = subparsers.add_parser("history", help="show or export the mood and track history")
    history.add_argument("--config", help="config file (default /etc/moodbox/config.toml, else the repo's)")
    history.add_argument("--csv", metavar="FILE", help="write all rows as CSV to FILE ('-' for stdout)")
    history.add_argument("--moods", action="store_true", help="the mood changes instead of the tracks")
    history.add_argument("--last", type=int, default=20, metavar="N", help="rows to print (default 20)")
    history.set_defaults(func=cmd_history)
