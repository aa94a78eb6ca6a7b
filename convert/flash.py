"""``python -m convert flash TARGET``: check a shipped model, install it on a box, make the daemon reload.

TARGET is a local folder (or a ``.tflite`` path in one), or ``user@host[:dir]``
for a box over ssh (``dir`` defaults to where the box's config puts models).

1. Validate: the model passes the box's own checks (``device.emotion``: sha256
   against its metadata, FER2013 labels, 1x48x48x1 input, 7 outputs, a test
   inference in this environment's TFLite runtime), needs no runtime newer than
   tflite-runtime 2.14, and its metadata carries the PrivateTest figures.
2. Copy model and metadata next to the old ones under temporary names, check
   the copy's sha256, keep the old pair as ``*.prev``, and rename the new pair
   into place, so the box never reads a half-written file.
3. Reload: publish ``<base>/set/reload_model`` over MQTT and wait for the
   daemon's answer on ``<base>/response`` (``--mqtt HOST``); otherwise restart
   the service (over ssh for a remote box, ``--reload restart`` locally); or
   say what to do. The daemon checks the model again and keeps the old one if
   the check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from convert.evaluate import sha256_file

__all__ = [
    "DEFAULT_BOX_DIR",
    "MAX_RUNTIME_VERSION",
    "FlashError",
    "Runner",
    "Target",
    "flash",
    "install_local",
    "install_remote",
    "parse_target",
    "request_reload",
    "restart_command",
    "validate",
]

log = logging.getLogger(__name__)

#: Where install.sh puts the model and points /etc/moodbox/config.toml's [model] path.
DEFAULT_BOX_DIR = "/opt/moodbox/models"
DEFAULT_STEM = "emotion_int8"
SERVICE = "moodbox.service"
#: Boxes on Bookworm's numpy 1.26 stack run tflite-runtime 2.14.
MAX_RUNTIME_VERSION = (2, 14, 0)

#: Runs one command line (argv list) and returns the finished process; injected for tests.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

_REMOTE = re.compile(r"^(?P<login>[^@/:\s]+@[^@/:\s]+)(?::(?P<dir>.*))?$")
# One ssh connection is reused by every ssh/scp call of a run: one password prompt, not four.
_SSH_OPTIONS = ("-o", "ControlMaster=auto", "-o", "ControlPath=~/.ssh/moodbox-flash-%C", "-o", "ControlPersist=60")


class FlashError(Exception):
    """The model or the target was refused; nothing on the box was changed."""


@dataclass(frozen=True)
class Target:
    login: str | None  # "user@host" for a box over ssh, None for this machine
    directory: str
    stem: str  # file stem the box's config names, e.g. "emotion_int8"

    def __str__(self) -> str:
        where = f"{self.login}:{self.directory}" if self.login else self.directory
        return f"{where}/{self.stem}.tflite"


def parse_target(text: str, stem: str = DEFAULT_STEM) -> Target:
    """``user@host[:dir]`` -> a remote target; anything else is a local folder or ``.tflite`` path."""
    match = _REMOTE.match(text)
    if match:
        directory = match["dir"] or DEFAULT_BOX_DIR
        if directory.endswith(".tflite"):
            remote = PurePosixPath(directory)
            directory, stem = str(remote.parent), remote.stem
        return Target(match["login"], directory.rstrip("/") or "/", stem)
    path = Path(text)
    if path.suffix == ".tflite":
        return Target(None, str(path.parent), path.stem)
    return Target(None, str(path), stem)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def validate(model: Path) -> dict[str, Any]:
    """The model's metadata, once the model passed every check; FlashError says which one failed."""
    from device.emotion import EmotionClassifier, ModelError, metadata_path

    if model.suffix != ".tflite" or not model.is_file():
        raise FlashError(f"{model}: not a .tflite file")
    try:
        classifier = EmotionClassifier(model)
    except ModelError as exc:
        raise FlashError(str(exc)) from None
    meta = json.loads(metadata_path(model).read_text())
    needed = str(meta.get("min_runtime_version", ""))
    if not needed or _version_tuple(needed) > MAX_RUNTIME_VERSION:
        raise FlashError(f"{model}: min_runtime_version {needed or 'missing'} is newer than tflite-runtime "
                         f"{'.'.join(map(str, MAX_RUNTIME_VERSION))}, which Bookworm boxes run")
    private = meta.get("accuracy", {}).get("private_test", {})
    if not isinstance(private.get("int8"), (int, float)):
        raise FlashError(f"{model}: its metadata has no PrivateTest accuracy report; "
                         "make the model with `python -m convert ship`")
    log.info("%s passed the box's checks on %s: %s version %s, PrivateTest int8 %.2f%%", model.name,
             classifier.runtime, meta.get("name"), meta.get("version"), 100 * private["int8"])
    return meta


def _fsync(path: Path) -> None:
    # An SD card loses unflushed data on a power cut; rename only what is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_local(model: Path, target: Target, sha256: str) -> Path:
    """Copy ``model`` and its JSON into ``target``'s folder atomically; returns the installed model path."""
    directory = Path(target.directory)
    if not directory.is_dir():
        raise FlashError(f"{directory}: no such folder (create it, or point TARGET at the box's model folder)")
    pairs = [(model, directory / f"{target.stem}.tflite"),
             (model.with_suffix(".json"), directory / f"{target.stem}.json")]
    staged = [(src, live.with_name(f".{live.name}.new"), live) for src, live in pairs]
    try:
        for src, new, _ in staged:
            shutil.copyfile(src, new)
            _fsync(new)
        if sha256_file(staged[0][1]) != sha256:
            raise FlashError(f"the copy in {directory} does not hash to {sha256}: disk full or failing?")
        for _, _, live in staged:
            if live.exists():
                shutil.copy2(live, live.with_name(live.name + ".prev"))
        # Model first: until its JSON follows, the box's sha256 check refuses the pair and keeps the old model.
        for _, new, live in staged:
            os.replace(new, live)
        _fsync(directory)
    finally:
        for _, new, _ in staged:
            new.unlink(missing_ok=True)
    return pairs[0][1]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=300, check=False)


def _checked(runner: Runner, argv: Sequence[str], what: str) -> str:
    done = runner(argv)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout or "").strip()
        raise FlashError(f"{what} failed (exit {done.returncode}){': ' + detail if detail else ''}")
    return done.stdout


def remote_install_script(stage: str, target: Target, sha256: str, sudo: bool) -> str:
    """The shell script run on the box: stage -> temp names beside the live files -> rename."""
    do = "sudo -n " if sudo else ""
    q = shlex.quote
    directory = target.directory
    model, meta = f"{directory}/{target.stem}.tflite", f"{directory}/{target.stem}.json"
    new_model, new_meta = f"{directory}/.{target.stem}.tflite.new", f"{directory}/.{target.stem}.json.new"
    return "\n".join([
        "set -e",
        f"trap 'rm -rf {q(stage)}; {do}rm -f {q(new_model)} {q(new_meta)}' EXIT",
        f"test -d {q(directory)} || {{ echo {q(f'no folder {directory} on the box')} >&2; exit 3; }}",
        f"{do}install -m 0644 {q(stage + '/model.tflite')} {q(new_model)}",
        f"{do}install -m 0644 {q(stage + '/model.json')} {q(new_meta)}",
        f"test \"$(sha256sum < {q(new_model)} | cut -d' ' -f1)\" = {q(sha256)} || "
        f"{{ echo 'copied model does not match sha256 {sha256}' >&2; exit 4; }}",
        f"if [ -e {q(model)} ]; then {do}cp -p {q(model)} {q(model + '.prev')}; fi",
        f"if [ -e {q(meta)} ]; then {do}cp -p {q(meta)} {q(meta + '.prev')}; fi",
        f"{do}mv -f {q(new_model)} {q(model)}",
        f"{do}mv -f {q(new_meta)} {q(meta)}",
        "sync",
    ])


def install_remote(model: Path, target: Target, sha256: str, runner: Runner = _run, sudo: bool = True) -> str:
    """scp the pair to a staging folder on the box, then install and rename there in one ssh call."""
    if target.login is None:
        raise FlashError(f"{target} is not a remote target")
    ssh = ["ssh", *_SSH_OPTIONS, target.login]
    stage = _checked(runner, [*ssh, "mktemp -d /tmp/moodbox-flash.XXXXXX"], "creating a staging folder on the box")
    stage = stage.strip()
    if not stage.startswith("/tmp/moodbox-flash."):
        raise FlashError(f"unexpected answer from mktemp on {target.login}: {stage!r}")
    try:
        for src, name in ((model, "model.tflite"), (model.with_suffix(".json"), "model.json")):
            scp = ["scp", "-q", *_SSH_OPTIONS, str(src), f"{target.login}:{stage}/{name}"]
            _checked(runner, scp, f"scp of {src.name}")
    except FlashError:
        runner([*ssh, f"rm -rf {shlex.quote(stage)}"])
        raise
    # The script removes the staging folder itself, whatever happens.
    _checked(runner, [*ssh, remote_install_script(stage, target, sha256, sudo)], "installing on the box")
    return f"{target.directory}/{target.stem}.tflite"


def restart_command(target: Target, sudo: bool) -> list[str]:
    """The argv that restarts the daemon where ``target`` lives."""
    systemctl = (["sudo", "-n"] if sudo else []) + ["systemctl", "restart", SERVICE]
    if target.login:
        return ["ssh", *_SSH_OPTIONS, target.login, shlex.join(systemctl)]
    return systemctl


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    base: str  # e.g. "moodbox/livingroom"
    username: str = ""
    password: str | None = None
    timeout_s: float = 20.0


def request_reload(settings: MqttSettings) -> dict[str, Any]:
    """Publish ``reload_model`` and return the daemon's response (``status`` ok or error).

    Raises FlashError when the broker refuses us or no answer comes within the timeout.
    """
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise FlashError("asking the daemon over MQTT needs paho-mqtt (pip install paho-mqtt)") from None

    from device.topics import RESPONSE, command_topic, topic

    transaction = f"flash-{uuid.uuid4().hex[:12]}"
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"moodbox-{transaction}")
    if settings.username:
        client.username_pw_set(settings.username, settings.password)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            events.put(("refused", str(reason_code)))
        else:
            client.subscribe(topic(settings.base, RESPONSE), qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        # Publish only once subscribed, or a fast daemon's answer could be missed.
        body = json.dumps({"transaction": transaction})
        client.publish(command_topic(settings.base, "reload_model"), body, qos=1, retain=False)

    def on_message(client, userdata, message):
        try:
            answer = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(answer, dict) and answer.get("transaction") == transaction:
            events.put(("answer", answer))

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(settings.host, settings.port, keepalive=30)
    except OSError as exc:
        raise FlashError(f"cannot reach MQTT broker {settings.host}:{settings.port}: {exc}") from None
    client.loop_start()
    try:
        kind, value = events.get(timeout=settings.timeout_s)
    except queue.Empty:
        raise FlashError(f"no answer on {topic(settings.base, RESPONSE)} within {settings.timeout_s:.0f} s: "
                         "is the daemon running with MQTT on, and is the base topic right?") from None
    finally:
        client.disconnect()
        client.loop_stop()
    if kind == "refused":
        raise FlashError(f"MQTT broker {settings.host}:{settings.port} refused the connection: {value}")
    return value


def flash(
    model: Path,
    target: Target,
    reload: str = "auto",
    mqtt: MqttSettings | None = None,
    runner: Runner = _run,
    sudo: bool | None = None,
) -> int:
    """Validate, install, reload. Exit code 0 when reloaded (or reload skipped), 2 when installed but not reloaded."""
    if reload == "auto":
        reload = "mqtt" if mqtt else ("restart" if target.login else "none")
    if reload == "mqtt" and mqtt is None:
        raise FlashError("--reload mqtt needs --mqtt HOST")
    meta = validate(model)
    if sudo is None:
        # The box's model folder belongs to the service user; restarting a unit needs root too.
        sudo = bool(target.login) or os.geteuid() != 0
    if target.login:
        installed = install_remote(model, target, meta["sha256"], runner, sudo)
    else:
        installed = str(install_local(model, target, meta["sha256"]))
    print(f"installed {meta.get('name')} version {meta.get('version')} as {target}")

    if reload == "mqtt" and mqtt is not None:
        try:
            answer = request_reload(mqtt)
        except FlashError as exc:
            print(f"installed, but not reloaded: {exc}")
            return 2
        if answer.get("status") != "ok":
            print(f"installed, but the daemon refused it and keeps its old model: {answer.get('error')}")
            return 2
        print(f"the daemon reloaded {installed}")
        return 0
    if reload == "restart":
        argv = restart_command(target, sudo)
        done = runner(argv)
        if done.returncode != 0:
            print(f"installed, but `{shlex.join(argv)}` failed ({(done.stderr or '').strip()}): "
                  f"restart the service yourself")
            return 2
        print(f"restarted {SERVICE}")
        return 0
    print("installed; to load it, publish an empty message to <base>/set/reload_model (e.g. "
          f"`mosquitto_pub -t moodbox/<box_id>/set/reload_model -n`) or restart {SERVICE} on the box")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target",
                        help=f"local folder or .tflite path, or user@host[:dir] (dir default {DEFAULT_BOX_DIR})")
    parser.add_argument("--model", type=Path, default=Path("models") / f"{DEFAULT_STEM}.tflite",
                        help="the shipped model; its .json must sit beside it (default: %(default)s)")
    parser.add_argument("--as", dest="stem", default=DEFAULT_STEM,
                        help="file stem on the box, as its [model] path names it (default: %(default)s)")
    parser.add_argument("--reload", choices=["auto", "mqtt", "restart", "none"], default="auto",
                        help="auto: MQTT with --mqtt, else restart over ssh, else print what to do")
    parser.add_argument("--mqtt", metavar="HOST", help="MQTT broker the box is connected to")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--box-id", help="the box's id (its base topic is moodbox/<box_id>)")
    parser.add_argument("--base", help="the box's base topic, if not moodbox/<box_id>")
    parser.add_argument("--username", default="", help="MQTT user; the password comes from $MOODBOX_MQTT_PASSWORD")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the daemon's answer")
    parser.add_argument("--no-sudo", dest="sudo", action="store_false", default=None,
                        help="don't use sudo -n on the box (its model folder is writable by the ssh user)")


def main(args: argparse.Namespace) -> int:
    mqtt = None
    try:
        if args.mqtt:
            base = args.base or (f"moodbox/{args.box_id}" if args.box_id else None)
            if base is None:
                raise FlashError("--mqtt needs --box-id (or --base): the box's topics are moodbox/<box_id>/...")
            mqtt = MqttSettings(args.mqtt, args.mqtt_port, base, args.username,
                                os.environ.get("MOODBOX_MQTT_PASSWORD"), args.timeout)
        return flash(args.model, parse_target(args.target, args.stem), args.reload, mqtt, sudo=args.sudo)
    except FlashError as exc:
        print(f"flash refused: {exc}")
        return 1
