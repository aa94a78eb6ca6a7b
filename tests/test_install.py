"""install.sh against a fake root: the box install on Bookworm and Trixie, idempotence, uninstall, purge.

``--root DIR`` makes every system path live under DIR and appends the system
commands (apt-get, raspi-config, systemctl, useradd, pip...) to
DIR/commands.log instead of running them, so these tests change nothing on
this machine and download nothing. The script runs from a small copy of the
repo, so the model it installs is one these tests control.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from device.config import parse_config

REPO = Path(__file__).resolve().parent.parent
MODEL = b"TFL3 not a real model, only bytes to copy"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query (Debian)")


@pytest.fixture
def repo(tmp_path) -> Path:
    """The parts of the checkout install.sh reads, plus a stand-in model."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("install.sh", "config.toml", "pyproject.toml"):
        shutil.copy2(REPO / name, copy / name)
    (copy / "README.md").write_text("# Moodbox\n")
    shutil.copytree(REPO / "systemd", copy / "systemd")
    shutil.copytree(REPO / "requirements", copy / "requirements")
    for package in ("device", "convert"):
        (copy / package).mkdir()
        (copy / package / "__init__.py").write_text('"""stand-in"""\n')
    (copy / "models").mkdir()
    (copy / "models" / "emotion_int8.tflite").write_bytes(MODEL)
    (copy / "models" / "emotion_int8.json").write_text('{"format": "moodbox-emotion-model/1"}\n')
    return copy


def make_root(path: Path, codename: str = "bookworm", groups: tuple[str, ...] = ("video", "i2c", "gpio"),
              model: str = "Raspberry Pi 4 Model B Rev 1.5") -> Path:
    """A fresh Raspberry Pi OS as far as install.sh looks at it."""
    (path / "proc" / "device-tree").mkdir(parents=True)
    (path / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\0")
    (path / "etc").mkdir()
    version = {"bookworm": "12", "trixie": "13", "bullseye": "11"}[codename]
    (path / "etc" / "os-release").write_text(
        f'PRETTY_NAME="Debian GNU/Linux {version} ({codename})"\nVERSION_ID="{version}"\n'
        f"VERSION_CODENAME={codename}\nID=debian\n"
    )
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc" / "group").write_text("root:x:0:\n" + "".join(f"{g}:x:{900 + i}:\n" for i, g in enumerate(groups)))
    (path / "boot" / "firmware").mkdir(parents=True)
    (path / "boot" / "firmware" / "config.txt").write_text("[all]\ncamera_auto_detect=1\n")
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    return make_root(tmp_path / "root")


def install(repo: Path, root: Path, *args: str, arch: str = "arm64", check: bool = True):
    env = {**os.environ, "MOODBOX_ARCH": arch}
    result = subprocess.run(["bash", str(repo / "install.sh"), "--root", str(root), *args], capture_output=True,
                            text=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def commands(root: Path) -> list[str]:
    log = root / "commands.log"
    return log.read_text().splitlines() if log.exists() else []


def fresh_commands(root: Path) -> None:
    (root / "commands.log").write_text("")


def tree(root: Path) -> dict[str, str]:
    """Every file under the root (but the command log) -> its sha256, links -> target."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            files[rel] = "-> " + os.readlink(path)
        elif path.is_file() and rel != "commands.log":
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def installed_config(root: Path):
    path = root / "etc" / "moodbox" / "config.toml"
    return parse_config(path.read_text(), str(path), path.parent)


# -- a first install ---------------------------------------------------------------


def test_bookworm_install(repo, root):
    result = install(repo, root)
    log = commands(root)
    assert log[0] == "apt-get update -q"
    assert log[1] == ("apt-get install -y -q --no-install-recommends python3-venv python3-picamera2 python3-systemd "
                      "i2c-tools libcap-dev")
    assert "raspi-config nonint do_i2c 0" in log
    assert ("useradd --system --user-group --home-dir /var/lib/moodbox --no-create-home --shell /usr/sbin/nologin "
            "--comment 'Moodbox daemon' moodbox") in log
    for group in ("video", "i2c", "gpio"):
        assert f"usermod -a -G {group} moodbox" in log
    assert not any(line.startswith("groupadd") for line in log)
    assert "/usr/bin/python3 -m venv --system-site-packages /opt/moodbox" in log
    assert "/opt/moodbox/bin/pip install -q --disable-pip-version-check -r /opt/moodbox/requirements.txt" in log
    assert "/opt/moodbox/bin/pip install -q --disable-pip-version-check --no-deps /opt/moodbox/src" in log
    assert log[-3:] == ["systemctl daemon-reload", "systemctl try-restart moodbox.service",
                        "systemctl enable --now moodbox.service"]
    # numpy < 2 on Bookworm, for apt's picamera2.
    requirements = (root / "opt/moodbox/requirements.txt").read_text()
    assert requirements == (repo / "requirements/runtime-bookworm.txt").read_text()
    assert "numpy==1.26.4" in requirements
    assert (root / "opt/moodbox/models/emotion_int8.tflite").read_bytes() == MODEL
    assert (root / "opt/moodbox/src/device/__init__.py").exists()
    assert os.readlink(root / "usr/local/bin/moodbox") == "/opt/moodbox/bin/moodbox"
    assert (root / "etc/systemd/system/moodbox.service").read_text() == (repo / "systemd/moodbox.service").read_text()
    assert "I2C was just turned on: reboot" in result.stdout


def test_config_is_written_for_the_box_paths(repo, root):
    install(repo, root)
    config = installed_config(root)
    assert config.state.dir == "/var/lib/moodbox"
    assert config.model.path == "/opt/moodbox/models/emotion_int8.tflite"
    assert config.mqtt.enabled is False
    # Everything else is the repo's documented default, comments included.
    repo_lines = (repo / "config.toml").read_text().splitlines()
    box_lines = (root / "etc/moodbox/config.toml").read_text().splitlines()
    assert [a for a, b in zip(repo_lines, box_lines, strict=True) if a != b] == ['path = "models/emotion_int8.tflite"']
    assert stat.S_IMODE((root / "etc/moodbox").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "etc/moodbox/config.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "var/lib/moodbox").stat().st_mode) == 0o700
    log = commands(root)
    assert "chown root:moodbox /etc/moodbox/config.toml" in log
    assert "chown moodbox:moodbox /var/lib/moodbox" in log


def test_trixie_install_uses_the_numpy_2_stack(repo, tmp_path):
    root = make_root(tmp_path / "trixie", "trixie")
    result = install(repo, root)
    assert "Raspberry Pi OS Trixie" in result.stdout
    requirements = (root / "opt/moodbox/requirements.txt").read_text()
    assert requirements == (repo / "requirements/runtime.txt").read_text()
    assert "numpy==2.2.6" in requirements and "tflite-runtime==" not in requirements
    assert "systemctl enable --now moodbox.service" in commands(root)


def test_missing_device_group_is_created(repo, tmp_path):
    root = make_root(tmp_path / "nogpio", groups=("video", "i2c"))
    install(repo, root)
    log = commands(root)
    assert log.index("groupadd --system gpio") < log.index("usermod -a -G gpio moodbox")
    assert "gpio:x:" in (root / "etc/group").read_text()


def test_an_existing_config_is_never_overwritten(repo, root):
    conf = root / "etc/moodbox/config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text("[camera]\nsource = \"opencv\"\n")
    result = install(repo, root)
    assert conf.read_text() == "[camera]\nsource = \"opencv\"\n"
    assert "keeping your /etc/moodbox/config.toml" in result.stdout


def test_missing_model_is_a_warning(repo, root):
    shutil.rmtree(repo / "models")
    result = install(repo, root)
    assert "no model in" in result.stderr and "refuse to start" in result.stderr


# -- running it again ------------------------------------------------------------------


@pytest.mark.parametrize("codename", ["bookworm", "trixie"])
def test_second_run_changes_nothing(repo, tmp_path, codename):
    root = make_root(tmp_path / codename, codename)
    install(repo, root, "--with-mosquitto", "--with-raspotify")
    before = tree(root)
    edited = (root / "etc/moodbox/config.toml").read_text().replace('level = "INFO"', 'level = "DEBUG"')
    (root / "etc/moodbox/config.toml").write_text(edited)
    fresh_commands(root)

    result = install(repo, root, "--with-mosquitto", "--with-raspotify")
    log = commands(root)
    for once in ("apt-get", "raspi-config", "useradd", "groupadd", "usermod", "curl", "/usr/bin/python3 -m venv",
                 "/opt/moodbox/bin/pip", "systemctl try-restart", "systemctl restart"):
        assert not [line for line in log if line.startswith(once)], f"{once} ran again: {log}"
    assert log[-2:] == ["systemctl daemon-reload", "systemctl enable --now moodbox.service"]
    assert (root / "etc/moodbox/config.toml").read_text() == edited  # the user's edit survives
    after = tree(root)
    assert {k: v for k, v in after.items() if k != "etc/moodbox/config.toml"} == \
           {k: v for k, v in before.items() if k != "etc/moodbox/config.toml"}
    assert [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("moodbox:")] == [
        "moodbox:x:999:999::/var/lib/moodbox:/usr/sbin/nologin"]
    assert "apt packages already installed" in result.stdout


def test_changed_code_is_reinstalled_and_the_service_restarted(repo, root):
    install(repo, root)
    fresh_commands(root)
    (repo / "device" / "__init__.py").write_text('"""a new version"""\n')
    install(repo, root)
    log = commands(root)
    assert "/opt/moodbox/bin/pip install -q --disable-pip-version-check --no-deps /opt/moodbox/src" in log
    assert "systemctl try-restart moodbox.service" in log
    assert not [line for line in log if "-r /opt/moodbox/requirements.txt" in line]
    assert (root / "opt/moodbox/src/device/__init__.py").read_text() == '"""a new version"""\n'


# -- options -------------------------------------------------------------------------------


def test_with_mosquitto(repo, root):
    install(repo, root, "--with-mosquitto")
    log = commands(root)
    assert "mosquitto mosquitto-clients" in log[1]
    assert "systemctl enable --now mosquitto.service" in log
    config = installed_config(root)
    assert config.mqtt.enabled is True and config.mqtt.host == "localhost"


def test_with_raspotify_names_the_receiver_after_the_box(repo, root):
    conf = root / "etc/moodbox/config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text((repo / "config.toml").read_text().replace('device_name = "moodbox"',
                                                               'device_name = "Living room"'))
    (root / "etc/raspotify").mkdir(parents=True)
    (root / "etc/raspotify/conf").write_text(
        "LIBRESPOT_QUIET=on\nLIBRESPOT_DISABLE_CREDENTIAL_CACHE=on\n#LIBRESPOT_NAME=\"Librespot\"\n"
    )
    result = install(repo, root, "--with-raspotify")
    log = commands(root)
    key = "curl -fsSL -o /usr/share/keyrings/raspotify_key.asc https://dtcooper.github.io/raspotify/key.asc"
    package = "apt-get install -y -q --no-install-recommends raspotify"
    assert log.index(key) < log.index(package)
    assert "raspotify main" in (root / "etc/apt/sources.list.d/raspotify.list").read_text()
    assert (root / "etc/raspotify/conf").read_text().splitlines() == [
        "LIBRESPOT_QUIET=on",
        "LIBRESPOT_DISABLE_CREDENTIAL_CACHE=off",
        'LIBRESPOT_NAME="Living room"',
        'LIBRESPOT_SYSTEM_CACHE="/var/cache/raspotify"',
    ]
    assert "systemctl restart raspotify.service" in log
    assert "--enable-oauth" in result.stdout and "'Living room'" in result.stdout


def test_raspotify_login_hint_disappears_once_credentials_are_cached(repo, root):
    (root / "var/cache/raspotify").mkdir(parents=True)
    (root / "var/cache/raspotify/credentials.json").write_text("{}")
    result = install(repo, root, "--with-raspotify")
    assert "--enable-oauth" not in result.stdout


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["armhf", "armv7l", "armel"])
def test_32_bit_is_refused(repo, root, arch):
    result = install(repo, root, arch=arch, check=False)
    assert result.returncode != 0
    assert f"32-bit system ({arch})" in result.stderr and "64-bit Raspberry Pi OS" in result.stderr
    assert commands(root) == []
    assert not (root / "opt").exists()


def test_old_release_is_refused(repo, tmp_path):
    root = make_root(tmp_path / "bullseye", "bullseye")
    result = install(repo, root, check=False)
    assert result.returncode != 0
    assert "unsupported OS release 'bullseye'" in result.stderr
    assert commands(root) == []


def test_not_a_pi_needs_pi_flag_under_a_fake_root(repo, tmp_path):
    root = make_root(tmp_path / "pc", model="Some PC")
    result = install(repo, root, check=False)
    assert result.returncode != 0 and "--root is for the box install" in result.stderr
    install(repo, root, "--pi")
    assert "systemctl enable --now moodbox.service" in commands(root)


def test_unknown_option_is_refused(repo, root):
    result = install(repo, root, "--frobnicate", check=False)
    assert result.returncode != 0 and "unknown option '--frobnicate'" in result.stderr


def test_help(repo):
    result = subprocess.run(["bash", str(repo / "install.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--with-raspotify" in result.stdout and "--purge" in result.stdout


# -- removal ----------------------------------------------------------------------------------


def test_uninstall_keeps_config_history_and_user(repo, root):
    install(repo, root)
    (root / "var/lib/moodbox/history.csv").write_text("time,mood\n")
    fresh_commands(root)
    result = install(repo, root, "--uninstall")
    assert commands(root) == ["systemctl disable --now moodbox.service", "systemctl daemon-reload"]
    assert not (root / "opt/moodbox").exists()
    assert not (root / "etc/systemd/system/moodbox.service").exists()
    assert not (root / "usr/local/bin/moodbox").is_symlink()
    assert (root / "etc/moodbox/config.toml").exists()
    assert (root / "var/lib/moodbox/history.csv").read_text() == "time,mood\n"
    assert "moodbox:" in (root / "etc/passwd").read_text()
    assert "kept:" in result.stdout
    # A second uninstall has nothing left to do.
    fresh_commands(root)
    install(repo, root, "--uninstall")
    assert commands(root) == []


def test_purge_removes_everything_and_forgets_mqtt(repo, root):
    install(repo, root)
    # What pip would have put there; the purge asks it to clear the retained MQTT messages.
    moodbox = root / "opt/moodbox/bin/moodbox"
    moodbox.write_text("#!/bin/sh\n")
    moodbox.chmod(0o755)
    fresh_commands(root)
    install(repo, root, "--purge")
    assert commands(root) == [
        "/opt/moodbox/bin/moodbox mqtt forget --config /etc/moodbox/config.toml",
        "systemctl disable --now moodbox.service",
        "systemctl daemon-reload",
        "userdel moodbox",
    ]
    for gone in ("opt/moodbox", "etc/moodbox", "var/lib/moodbox", "etc/systemd/system/moodbox.service"):
        assert not (root / gone).exists(), gone
    assert "moodbox" not in (root / "etc/passwd").read_text()
    assert "moodbox" not in (root / "etc/group").read_text()
    # And it installs again from scratch.
    fresh_commands(root)
    install(repo, root)
    assert any(line.startswith("useradd") for line in commands(root))


# -- the script itself ---------------------------------------------------------------------------


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; ./install.sh --dev does)")
    result = subprocess.run([shellcheck, "--severity=style", str(REPO / "install.sh")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_dev_requirements_are_pinned():
    for name in ("runtime.txt", "runtime-bookworm.txt", "dev.txt"):
        for line in (REPO / "requirements" / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                assert "==" in line, f"{name}: {line} is not pinned"
