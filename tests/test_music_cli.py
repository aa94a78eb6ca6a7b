"""``moodbox spotify login`` and ``moodbox history`` through the real argument parser."""

from __future__ import annotations

import argparse
import stat

import pandas as pd
import pytest

from device.music import cli
from device.music.history import History
from device.music.spotify import TOKEN_FILE
from fake_spotify import CLIENT_SECRET, FakeSpotify
from test_music_learning import _record


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="moodbox")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _config_file(tmp_path, fake: FakeSpotify | None, client_id: str | None = None) -> str:
    lines = [f'[state]\ndir = "{tmp_path / "state"}"\n']
    if fake is not None:
        lines.append(f'[spotify]\nclient_id = "{client_id if client_id is not None else "fake-client-id"}"\n'
                     f'api_base = "{fake.url}/v1/"\naccounts_base = "{fake.url}"\n')
    path = tmp_path / "config.toml"
    path.write_text("".join(lines))
    (tmp_path / "secrets.toml").write_text(f'[spotify]\nclient_secret = "{CLIENT_SECRET}"\n')
    return str(path)


def test_spotify_login_command(tmp_path, monkeypatch, capsys):
    with FakeSpotify() as fake:
        fake.premium = False
        config = _config_file(tmp_path, fake)

        def person(prompt: str) -> str:
            printed = capsys.readouterr().out
            link = next(w for w in printed.split() if w.startswith(fake.url + "/authorize"))
            return fake.agree(link)

        monkeypatch.setattr("builtins.input", person)
        assert run("spotify", "login", "--config", config) == 0
    out, err = capsys.readouterr()
    assert "Logged in as Test Listener" in out and "not Premium" in err
    token = tmp_path / "state" / TOKEN_FILE
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert CLIENT_SECRET not in out + err


def test_spotify_login_failures_exit_1_with_a_reason(tmp_path, monkeypatch, capsys):
    with FakeSpotify() as fake:
        monkeypatch.setattr("builtins.input", lambda prompt: "http://127.0.0.1:8888/callback?error=access_denied")
        assert run("spotify", "login", "--config", _config_file(tmp_path, fake)) == 1
        assert "did you press Cancel" in capsys.readouterr().err
        assert run("spotify", "login", "--config", _config_file(tmp_path, fake, client_id="")) == 1
        assert "client_id" in capsys.readouterr().err

        def cancel(prompt: str) -> str:
            raise EOFError

        monkeypatch.setattr("builtins.input", cancel)
        assert run("spotify", "login", "--config", _config_file(tmp_path, fake)) == 1
        assert "cancelled" in capsys.readouterr().err


def test_bad_config_exits_78(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text('[spotify]\nredirect_uri = "http://localhost:8888/callback"\n')
    with pytest.raises(SystemExit) as exited:
        run("spotify", "login", "--config", str(path))
    assert exited.value.code == 78 and "localhost" in capsys.readouterr().err


def test_history_export(tmp_path, capsys):
    config = _config_file(tmp_path, None)
    assert run("history", "--config", config) == 1
    assert "no history" in capsys.readouterr().err
    history = History(tmp_path / "state" / "history.sqlite")
    history.add_track(_record(track="First"))
    history.add_track(_record(track="Second", improved=False, feedback="like"))
    history.add_mood(1.7e9, "sad", "neutral", 0.7, True)
    assert run("history", "--config", config) == 0
    shown = capsys.readouterr().out
    assert "First" in shown and "Second" in shown and "like" in shown
    out = tmp_path / "export.csv"
    assert run("history", "--config", config, "--csv", str(out)) == 0
    frame = pd.read_csv(out)
    assert frame["track"].tolist() == ["First", "Second"] and frame["improved"].tolist() == [True, False]
    assert frame["started"][0].startswith("2023-11-14")
    assert run("history", "--config", config, "--moods", "--csv", "-") == 0
    assert "sad,neutral,0.7,True" in capsys.readouterr().out.replace(" ", "")
    history.close()
