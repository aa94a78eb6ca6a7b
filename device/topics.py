"""THE one table of MQTT topics and commands.

Subscriptions, publishes, Home Assistant discovery (``device.discovery``) and
the README tables (``moodbox mqtt topics``) are all generated from here, so a
topic or command cannot exist in one place and be missing in another.

Every topic hangs off the box's base topic (default ``moodbox/<box_id>``).

Command payloads, on ``<base>/set/<command>`` (never retained), come in two
forms, as in Zigbee2MQTT:

* plain text: the value itself, e.g. ``uplift``, ``40``, ``happy 30``; an
  empty payload for commands that take no value;
* a JSON object: ``{"value": <value>, "transaction": "<id>"}``; both keys are
  optional, no other key is allowed, and ``transaction`` (a string of at most
  64 characters) is echoed in the response. A payload is JSON when its first
  non-blank character is ``{``.

Every command gets exactly one message on ``<base>/response``:
``{"command", "status": "ok"|"error", "transaction", "error", "data"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from device.config import Config
from device.events import NO_FACE
from device.preprocess import EMOTIONS

__all__ = [
    "AVAILABILITY",
    "COMMANDS",
    "COMMAND_SET",
    "EVENTS",
    "MOOD",
    "MOODS",
    "OFFLINE",
    "ONLINE",
    "POLICIES",
    "RESPONSE",
    "STATE",
    "STATS",
    "TOPICS",
    "CommandSpec",
    "InvalidValue",
    "MoodOverride",
    "PayloadError",
    "Request",
    "Topic",
    "box_id",
    "command_name",
    "command_topic",
    "commands_markdown",
    "commands_owned_by",
    "derive_box_id",
    "parse_payload",
    "response_payload",
    "sanitize_box_id",
    "topic",
    "topics_markdown",
]

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
#: Everything the mood can be, in the order Home Assistant lists them.
MOODS: tuple[str, ...] = (*EMOTIONS, NO_FACE)
POLICIES: tuple[str, ...] = ("uplift", "match", "iso", "off")
TRANSACTION_MAX = 64
OVERRIDE_DEFAULT_MINUTES = 30
OVERRIDE_MAX_MINUTES = 1440
MACHINE_ID = Path("/etc/machine-id")


@dataclass(frozen=True)
class Topic:
    """One topic under the base. ``qos`` 0 for retained snapshots that are
    re-sent on every connect: a QoS 1 copy queued while offline would be
    delivered after the fresh one and overwrite it."""

    key: str
    suffix: str
    retained: bool
    qos: int
    direction: str  # "out": the box publishes it; "in": the box listens (you publish)
    payload: str  # for people: what travels there


AVAILABILITY = Topic("availability", "availability", True, 1, "out",
                     "`online`, or `offline` (also the Last Will, sent by the broker if the box vanishes)")
STATE = Topic("state", "state", True, 0, "out",
              "JSON: `mood`, `confidence` (0-1), `probabilities` {emotion: 0-1}, `since` (ISO 8601), "
              "`override`, `face` (bool), `policy`, `camera` (`on`/`off`), `camera_state`, `volume`, "
              "`playing` {`track`, `artists`, `album`, `playlist`, ...} or null, `last_error` {`text`, `source`, `at`} "
              "or null, `model` {`version`, `accuracy`}")
MOOD = Topic("mood", "mood", True, 0, "out", "the mood name alone: " + ", ".join(f"`{m}`" for m in MOODS))
EVENTS = Topic("events", "events", False, 1, "out",
               "JSON with `event`: `mood_changed`, `track_started`, `track_finished` (with `mood_before` and "
               "`mood_after`), `feedback`, `error`; and `at` (ISO 8601)")
STATS = Topic("stats", "stats", False, 0, "out",
              "JSON every `stats_interval_s` (60 s): `fps`, `detect_ms`, `classify_ms`, `capture_ms`, "
              "`cpu_temp_c` (null where unknown), `uptime_s`, `model` {`version`, `accuracy`}")
RESPONSE = Topic("response", "response", False, 1, "out",
                 "JSON answer to each command: `command`, `status` (`ok`/`error`), `transaction` (echoed), "
                 "`error` (text, empty when ok), `data`")
COMMAND_SET = Topic("set", "set/<command>", False, 1, "in",
                    "a command: plain text value, or JSON `{\"value\": ..., \"transaction\": \"...\"}`")

TOPICS: tuple[Topic, ...] = (AVAILABILITY, STATE, MOOD, EVENTS, STATS, RESPONSE, COMMAND_SET)


def topic(base: str, which: Topic) -> str:
    if which is COMMAND_SET:
        raise ValueError("command topics need a name: use command_topic()")
    return f"{base}/{which.suffix}"


def command_topic(base: str, name: str) -> str:
    return f"{base}/{COMMAND_SET.suffix.replace('<command>', name)}"


def command_name(base: str, full_topic: str) -> str | None:
    """The ``<command>`` of ``<base>/set/<command>`` (known or not), else None."""
    prefix = command_topic(base, "")
    return full_topic[len(prefix):] if full_topic.startswith(prefix) else None


# --- box id -----------------------------------------------------------------


def sanitize_box_id(text: str) -> str:
    """Lower-case letters, digits, _ and - only (what HA allows in discovery topics), at most 32."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.strip().lower()).strip("_-")[:32]


def derive_box_id(configured: str = "", machine_id: Path = MACHINE_ID) -> str:
    """The configured id, sanitised; else a short hash of /etc/machine-id (else of the host name).

    machine-id(5) asks applications not to publish the id itself, so it is
    hashed with an application-specific prefix.
    """
    if configured:
        clean = sanitize_box_id(configured)
        if clean:
            if clean != configured:
                log.info("box id %r is used as %r in topics", configured, clean)
            return clean
        log.warning("box id %r has no usable characters; deriving one from the machine id", configured)
    try:
        raw = machine_id.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        raw = ""
    return hashlib.sha256(b"moodbox:" + (raw or socket.gethostname()).encode()).hexdigest()[:8]


def box_id(config: Config) -> str:
    """This box's id, for topics and ``OutputContext.box_id``: ``[mqtt] box_id`` or one derived from machine-id."""
    return derive_box_id(config.mqtt.box_id)


# --- command values ---------------------------------------------------------


class InvalidValue(ValueError):
    """A command value that is out of range or of the wrong kind; the text says what is allowed."""


class MoodOverride(NamedTuple):
    """The value of the ``mood`` command: hold ``mood`` for ``minutes``. Clearing is the value None.

    A named tuple, so the daemon can unpack it: ``mood, minutes = command.value``.
    """

    mood: str
    minutes: int


def _text(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) else None


def _no_value(value: Any) -> None:
    # Home Assistant's MQTT button sends "PRESS" unless told otherwise.
    if value is None or _text(value) in ("", "press"):
        return None
    raise InvalidValue("takes no value: send an empty payload or PRESS")


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        if text in options:
            return text
        raise InvalidValue(f"must be one of {', '.join(options)}")

    return parse


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value)
    if text in ("on", "true"):
        return True
    if text in ("off", "false"):
        return False
    raise InvalidValue("must be on or off")


def _whole(value: Any, low: int, high: int, what: str = "") -> int:
    """An int in [low, high] from a JSON number or ASCII digits; no bool, no fraction, no NaN."""
    number: float | int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}(\.0*)?", value.strip()):
        number = int(float(value.strip()))
    if number is None or not low <= number <= high:
        raise InvalidValue(f"{what + ' ' if what else ''}must be a whole number from {low} to {high}")
    return int(number)


def _feedback(value: Any) -> str:
    # The music engine records a dislike as a skip: the track stops and counts against its playlist.
    text = _text(value)
    if text == "like":
        return "like"
    if text in ("dislike", "skip"):
        return "skip"
    raise InvalidValue("must be like or dislike (skip)")


def _volume(value: Any) -> int:
    return _whole(value, 0, 100)


def _mood_override(value: Any) -> MoodOverride | None:
    shape = f"must be clear, a mood ({', '.join(EMOTIONS)}) or a mood and minutes, e.g. \"happy 30\""
    if isinstance(value, dict):
        if set(value) - {"mood", "minutes"} or "mood" not in value:
            raise InvalidValue('as JSON must be {"mood": <mood>, "minutes": <1-1440>}')
        mood, minutes = _text(value["mood"]), value.get("minutes", OVERRIDE_DEFAULT_MINUTES)
    elif isinstance(value, str):
        parts = value.split()
        if len(parts) not in (1, 2):
            raise InvalidValue(shape)
        mood = parts[0].lower()
        if mood == "clear" and len(parts) == 1:
            return None
        minutes = parts[1] if len(parts) == 2 else OVERRIDE_DEFAULT_MINUTES
    else:
        raise InvalidValue(shape)
    if mood not in EMOTIONS:
        raise InvalidValue(shape)
    return MoodOverride(mood, _whole(minutes, 1, OVERRIDE_MAX_MINUTES, "minutes"))


@dataclass(frozen=True)
class CommandSpec:
    """One command: ``parse`` turns a raw value (text or JSON) into the typed ``Command.value``."""

    name: str
    owner: str  # "daemon" or "music": the part that answers it with a CommandResult
    summary: str
    accepts: str  # for people: the values allowed
    value: str  # for people: the typed value the owner receives
    parse: Callable[[Any], Any]
    example: str


COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in (
    CommandSpec("play", "music", "start or resume music for the current mood", "no value (empty or `PRESS`)",
                "None", _no_value, ""),
    CommandSpec("pause", "music", "pause playback", "no value (empty or `PRESS`)", "None", _no_value, ""),
    CommandSpec("next", "music", "skip to the next track", "no value (empty or `PRESS`)", "None", _no_value, ""),
    CommandSpec("policy", "music", "how moods map to music", " / ".join(f"`{p}`" for p in POLICIES), "str",
                _choice(*POLICIES), "uplift"),
    CommandSpec("volume", "music", "playback volume, percent", "`0`-`100`", "int", _volume, "40"),
    CommandSpec("feedback", "music", "rate the current track; dislike also skips it",
                "`like` / `dislike` (or `skip`)", "\"like\" or \"skip\"", _feedback, "like"),
    CommandSpec("camera", "daemon", "privacy switch: off stops the camera", "`on` / `off` (or true/false)", "bool",
                _switch, "off"),
    CommandSpec("reload_model", "daemon", "re-read the model file (after `convert flash`)",
                "no value (empty or `PRESS`)", "None", _no_value, ""),
    CommandSpec("mood", "daemon", "override the mood for N minutes, or clear the override",
                f"`clear`, `<mood>` ({OVERRIDE_DEFAULT_MINUTES} min), `<mood> <minutes>` (1-{OVERRIDE_MAX_MINUTES}),"
                " or JSON value `{\"mood\": ..., \"minutes\": ...}`", "MoodOverride(mood, minutes), None to clear",
                _mood_override, "happy 30"),
)}


def commands_owned_by(owner: str) -> frozenset[str]:
    """What an output puts in its ``commands`` attribute, e.g. ``commands_owned_by("music")``."""
    return frozenset(name for name, spec in COMMANDS.items() if spec.owner == owner)


# --- command payloads -------------------------------------------------------


@dataclass(frozen=True)
class Request:
    command: str
    value: Any
    transaction: str | None


class PayloadError(ValueError):
    """A command payload that is refused; carries the transaction when it could be read."""

    def __init__(self, message: str, transaction: str | None = None) -> None:
        super().__init__(message)
        self.transaction = transaction


def parse_payload(name: str, payload: bytes, max_bytes: int) -> Request:
    """Validate one message from ``<base>/set/<name>``; raises PayloadError saying what is wrong."""
    spec = COMMANDS.get(name)
    if spec is None:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise PayloadError(f"unknown command {shown!r}; known: {', '.join(COMMANDS)}")
    if len(payload) > max_bytes:
        raise PayloadError(f"payload too large: {len(payload)} bytes, limit {max_bytes}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8 text") from None
    transaction = None
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise PayloadError(f"malformed JSON: {reason}") from None
        if not isinstance(document, dict):
            raise PayloadError('malformed JSON: expected an object {"value": ..., "transaction": ...}')
        transaction = document.get("transaction")
        if transaction is not None and (not isinstance(transaction, str) or len(transaction) > TRANSACTION_MAX):
            raise PayloadError(f"transaction must be a string of at most {TRANSACTION_MAX} characters")
        extra = sorted(str(k) for k in set(document) - {"value", "transaction"})
        if extra:
            raise PayloadError(f"unknown key(s) {', '.join(extra)[:80]}: a JSON command has only "
                               "'value' and 'transaction'", transaction)
        raw = document.get("value")
    else:
        raw = text
    try:
        value = spec.parse(raw)
    except InvalidValue as exc:
        raise PayloadError(f"{name}: {exc}", transaction) from None
    return Request(name, value, transaction)


def response_payload(command: str, ok: bool, error: str = "", transaction: str | None = None,
                     data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of a ``<base>/response`` message."""
    return {"command": command, "status": "ok" if ok else "error", "transaction": transaction,
            "error": "" if ok else (error or "failed"), "data": data or {}}


# --- README tables ----------------------------------------------------------


def topics_markdown(base: str = "moodbox/<box_id>") -> str:
    rows = ["| topic | published by | retained | QoS | payload |", "| --- | --- | --- | --- | --- |"]
    for t in TOPICS:
        who = "the box" if t.direction == "out" else "you / Home Assistant"
        rows.append(f"| `{base}/{t.suffix}` | {who} | {'yes' if t.retained else 'no'} | {t.qos} | {t.payload} |")
    return "\n".join(rows)


def commands_markdown() -> str:
    rows = ["| command | does | payload | owner |", "| --- | --- | --- | --- |"]
    for spec in COMMANDS.values():
        rows.append(f"| `set/{spec.name}` | {spec.summary} | {spec.accepts} | {spec.owner} |")
    return "\n".join(rows)
