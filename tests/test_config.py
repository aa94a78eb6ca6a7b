"""config.toml validation: exact messages, line numbers, exit code 78, secrets."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from device.config import EX_CONFIG, REPO_CONFIG, Config, ConfigError, load_config, parse_config


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    return caught.value.problems


def test_repo_config_is_valid_and_matches_code_defaults():
    """Every default is written once in config.toml; the models must say the same."""
    from_file = load_config(REPO_CONFIG).model_dump(exclude={"base_dir"})
    from_code = Config().model_dump(exclude={"base_dir"})
    examples = {("music", "playlists")}  # config.toml shows example playlists; code defaults to none
    for section, values in from_code.items():
        if not isinstance(values, dict):
            assert from_file[section] == values, section
            continue
        for key, default in values.items():
            if (section, key) in examples:
                continue
            assert from_file[section][key] == default, f"[{section}] {key}: config.toml differs from the code default"


def test_every_repo_config_key_is_commented():
    lines = REPO_CONFIG.read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("["):
            continue
        if "=" in stripped and not stripped.startswith(("{", "}", "]")) and not line.startswith(" "):
            assert lines[number - 1].strip().startswith("#") or lines[number - 1].strip().endswith(("]", "= [")) \
                or "=" in lines[number - 1], f"line {number + 1} ({stripped}) has no comment above it"


def test_unknown_key_names_key_line_and_closest_match():
    text = "[camera]\nsource = \"replay\"\nfsp = 5\n"
    (message,) = problems(text)
    assert message.startswith("unknown key 'camera.fsp' (line 3); did you mean 'fps'?")
    assert "Valid keys in camera:" in message and "source" in message


def test_unknown_section_is_reported():
    (message,) = problems("[camra]\nsource = \"auto\"\n")
    assert message.startswith("unknown key 'camra' (line 1); did you mean 'camera'?")


def test_wrong_type_names_key_value_and_allowed():
    (message,) = problems("[pipeline]\nfps = \"fast\"\n")
    assert message.startswith("'pipeline.fps' (line 2) = 'fast': ")
    assert "number" in message


def test_out_of_range_names_bound():
    (message,) = problems("[mood]\nconfidence = 1.5\n")
    assert message == "'mood.confidence' (line 2) = 1.5: Input should be less than or equal to 1"


def test_zoom_tta_factors_are_checked():
    (message,) = problems("[model]\nzoom_tta = [0.93, 1.0]\n")
    assert message.startswith("'model.zoom_tta' (line 2) = [0.93, 1.0]: ")
    assert "0.8-1.25" in message and "[1.0]" in message
    (message,) = problems("[model]\nzoom_tta = [0.5]\n")
    assert "[0.5]" in message
    (message,) = problems("[model]\nzoom_tta = [0.9, 0.9]\n")
    assert "repeat" in message
    assert parse_config("[model]\nzoom_tta = []\n", "test.toml").model.zoom_tta == ()


def test_bad_choice_lists_choices():
    (message,) = problems("[camera]\nsource = \"webcam\"\n")
    assert "'camera.source' (line 2) = 'webcam'" in message
    for choice in ("'auto'", "'picamera2'", "'opencv'", "'replay'"):
        assert choice in message


def test_all_problems_reported_at_once():
    found = problems("[camera]\nfps = 0\n[mood]\nmin_dwell_s = -1\n")
    assert len(found) == 2


def test_broken_toml_is_a_config_error():
    (message,) = problems("[camera\nsource=1")
    assert message.startswith("not valid TOML")


def test_relative_paths_resolve_against_config_folder(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\npath = \"m/x.tflite\"\n")
    config = load_config(path)
    assert config.resolve(config.model.path) == tmp_path / "m" / "x.tflite"


def test_config_check_exit_codes(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nsorce = \"auto\"\n")
    result = subprocess.run([sys.executable, "-m", "device", "config", "check", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == EX_CONFIG == 78
    assert "unknown key 'camera.sorce' (line 2); did you mean 'source'?" in result.stderr
    good = subprocess.run([sys.executable, "-m", "device", "config", "check", str(REPO_CONFIG)],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout


def test_run_refuses_bad_config_with_78(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\nfps = -3\n")
    result = subprocess.run([sys.executable, "-m", "device", "run", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "'pipeline.fps' (line 2) = -3" in result.stderr


def test_repo_config_parses_with_tomllib():
    with REPO_CONFIG.open("rb") as handle:
        assert tomllib.load(handle)["config_version"] == 1
