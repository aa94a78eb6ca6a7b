"""The MQTT output: mood, state and stats out; validated commands in.

paho-mqtt runs its own network thread (``connect_async`` + ``loop_start``), so
neither the bus thread nor the camera loop ever waits on the broker. While the
broker is away paho reconnects with back-off; every (re)connect, and every
``online`` from Home Assistant's status topic, re-publishes availability,
discovery and the retained state, so the broker catches up after a restart.

This output owns no command: it checks each ``<base>/set/<name>`` payload
against ``device.topics``, answers bad ones itself (error response + error
event), publishes good ones as ``Command(source="mqtt")`` on the bus, and turns
the owner's ``CommandResult`` into the ``<base>/response`` message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device import __version__
from device.bus import Bus
from device.config import Config, MqttConfig, secret
from device.discovery import Identity, all_discovery_topics, discovery_messages, is_ours
from device.events import (
    CameraState,
    Command,
    CommandResult,
    ComponentState,
    Feedback,
    ModelLoaded,
    MoodChanged,
    PipelineStats,
    PlaybackState,
    TrackFinished,
    TrackStarted,
)
from device.topics import (
    AVAILABILITY,
    COMMANDS,
    EVENTS,
    MOOD,
    OFFLINE,
    ONLINE,
    RESPONSE,
    STATE,
    STATS,
    PayloadError,
    Topic,
    command_name,
    command_topic,
    parse_payload,
    response_payload,
    sanitize_box_id,
    topic,
)
from device.topics import box_id as box_id_for  # the name moodbox doctor imports

__all__ = [
    "MqttOutput",
    "box_id_for",
    "build",
    "create",
    "make_client",
    "read_cpu_temp",
]

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
#: CONNACK reasons that mean "fix the credentials": bad user name or password,
#: not authorized, bad authentication method (paho maps 3.1.1's 4 and 5 here too).
AUTH_REASONS = frozenset({134, 135, 140})
#: Bound on messages paho keeps while the broker is away.
MAX_QUEUED = 256
#: State keys an owner may confirm in ``CommandResult.data`` (e.g. music: {"policy": "iso"}).
OWNER_STATE_KEYS = ("policy", "volume", "camera", "playing")


# --- client -----------------------------------------------------------------


def _readable(path: Path, key: str) -> str:
    if not path.is_file():
        raise ValueError(f"mqtt.{key}: {path} is not a readable file")
    return str(path)


def make_client(cfg: MqttConfig, client_id: str, resolve: Callable[[str], Path] = Path,
                will_topic: str | None = None) -> mqtt.Client:
    """A paho client set up from ``[mqtt]``: protocol, credentials, TLS, Last Will, back-off.

    Raises ValueError naming the key when a TLS file is missing.
    """
    protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    if cfg.username:
        client.username_pw_set(cfg.username, secret(cfg.password) or None)
    elif secret(cfg.password):
        log.warning("mqtt.password is set but mqtt.username is empty: connecting anonymously")
    if cfg.tls or cfg.tls_ca or cfg.tls_cert:
        client.tls_set(
            ca_certs=_readable(resolve(cfg.tls_ca), "tls_ca") if cfg.tls_ca else None,
            certfile=_readable(resolve(cfg.tls_cert), "tls_cert") if cfg.tls_cert else None,
            keyfile=_readable(resolve(cfg.tls_key), "tls_key") if cfg.tls_key else None,
        )
        if cfg.tls_insecure:
            client.tls_insecure_set(True)
    if will_topic:
        client.will_set(will_topic, OFFLINE, qos=AVAILABILITY.qos, retain=True)
    client.reconnect_delay_set(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s))
    client.max_queued_messages_set(MAX_QUEUED)
    client.on_socket_open = no_delay
    return client


def no_delay(client, userdata, sock) -> None:
    """Send small MQTT packets at once: with Nagle, a response waits for the broker's delayed ACK (~40 ms)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a proxy or a test double): leave it
        pass


def _now_iso(epoch: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).isoformat(timespec="seconds")


def read_cpu_temp(path: Path = THERMAL_ZONE) -> float | None:
    """CPU temperature in °C from the kernel's thermal zone (millidegrees), None where there is none."""
    try:
        return round(int(path.read_text().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


class _Throttle:
    """At most one log line per ``interval`` seconds; says how many were held back."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def __call__(self) -> int | None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                return None
            held, self._held, self._next = self._held, 0, now + self._interval
            return held


@dataclasses.dataclass
class _Pending:
    command: Command
    deadline: float


# --- the output -------------------------------------------------------------


class MqttOutput:
    name = "mqtt"
    commands: frozenset[str] = frozenset()

    def __init__(self, cfg: MqttConfig, identity: Identity, client_id: str, *,
                 resolve: Callable[[str], Path] = Path, thermal: Path = THERMAL_ZONE) -> None:
        self._cfg = cfg
        self._id = identity
        self._client_id = client_id
        self._thermal = thermal
        self._started = time.monotonic()
        self._lock = threading.Lock()
        # Held from snapshot to publish, so the paho thread (announcing) and the bus thread (updating)
        # cannot publish two snapshots in the opposite order and leave the older one retained.
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connected = False
        self._health = "starting"
        self._bus: Bus | None = None
        # Built here, not in start(): a missing TLS file fails create(), which disables only this output.
        self._client = make_client(cfg, client_id, resolve, topic(identity.base, AVAILABILITY))
        self._ticker: threading.Thread | None = None
        self._pending: list[_Pending] = []
        self._state: dict[str, Any] = {
            "mood": None, "confidence": None, "probabilities": {}, "since": None, "override": False,
            "face": None, "policy": None, "camera": None, "camera_state": None, "volume": None,
            "playing": None, "last_error": None, "model": None,
        }
        self._figures: dict[str, Any] = {}
        self._bad_input_log = _Throttle()
        base, prefix = identity.base, identity.prefix
        self._ha_status = f"{prefix}/status"
        self._discovery = discovery_messages(identity, cfg.discovery)
        self._ours = {t for t, _ in self._discovery}
        self._maybe_ours = set(all_discovery_topics(prefix, identity.box_id))
        self._subscriptions = [
            (command_topic(base, "+"), 1),
            (self._ha_status, 1),
            # Our retained discovery from another mode or an older version shows up here and is cleared.
            (f"{prefix}/+/{identity.box_id}/+/config", 1),
            (f"{prefix}/device/{identity.box_id}/config", 1),
        ]

    # -- lifecycle --

    def start(self, bus: Bus) -> None:
        self._bus = bus
        client = self._client
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(self._cfg.host, self._cfg.port, self._cfg.keepalive)
        client.loop_start()
        self._ticker = threading.Thread(target=self._tick, name="mqtt-ticker", daemon=True)
        self._ticker.start()
        log.info("mqtt: box %s, base topic %s, broker %s:%d", self._id.box_id, self._id.base,
                 self._cfg.host, self._cfg.port)

    def stop(self) -> None:
        """Say offline (a graceful disconnect sends no Last Will), then disconnect; about 1 s at most."""
        self._stopping.set()
        client = self._client
        if self._bus is not None:
            if self._connected:
                info = client.publish(topic(self._id.base, AVAILABILITY), OFFLINE, qos=AVAILABILITY.qos, retain=True)
                try:
                    info.wait_for_publish(timeout=1.0)
                except (RuntimeError, ValueError):  # not queued: the connection is already gone
                    pass
            client.disconnect()
            client.loop_stop()
        if self._ticker is not None:
            self._ticker.join(timeout=2.0)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def health(self) -> str:
        return self._health

    # -- paho callbacks (paho's network thread) --

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        cfg = self._cfg
        if reason_code.is_failure:
            if reason_code.value in AUTH_REASONS:
                who = f"user {cfg.username!r}" if cfg.username else "anonymous clients"
                self._set_health("auth_failed", f"broker {cfg.host}:{cfg.port} refused {who}: {reason_code}; "
                                 "check mqtt.username and the password (secrets.toml or MOODBOX_MQTT_PASSWORD)")
            else:
                self._set_health("refused", f"broker {cfg.host}:{cfg.port} refused the connection: {reason_code}")
            return
        with self._lock:
            self._connected = True
        client.subscribe(self._subscriptions)
        self._announce()
        self._set_health("ok", f"connected to {cfg.host}:{cfg.port} as {self._client_id}")

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its `except OSError`, so the cause is still at hand.
        cause = sys.exc_info()[1]
        self._set_health("unreachable", f"cannot connect to {self._cfg.host}:{self._cfg.port}: "
                         f"{cause or 'connection failed'}; retrying")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
        if self._stopping.is_set():
            return
        if was_connected:
            self._set_health("unreachable", f"lost the broker {self._cfg.host}:{self._cfg.port}: {reason_code}; "
                             "reconnecting")
        elif self._health not in ("auth_failed", "refused"):
            self._set_health("unreachable", f"broker {self._cfg.host}:{self._cfg.port} closed the connection "
                             f"during the handshake ({reason_code}); a TLS client certificate refused?")

    def _on_message(self, client, userdata, message) -> None:
        try:
            if message.topic == self._ha_status:
                if message.payload.strip().lower() == ONLINE.encode():
                    log.info("Home Assistant is online: announcing again")
                    self._announce()
                return
            name = command_name(self._id.base, message.topic)
            if name is not None:
                self._command(name, message.payload, message.retain)
            elif (message.topic in self._maybe_ours and message.topic not in self._ours
                  and is_ours(message.payload, self._id.box_id)):
                log.info("clearing stale discovery %s (discovery mode is %s)", message.topic, self._cfg.discovery)
                client.publish(message.topic, b"", qos=1, retain=True)
        except Exception:  # an escaping exception would end paho's network thread
            log.exception("mqtt: failed on a message on %s", message.topic)

    # -- commands --

    def _command(self, name: str, payload: bytes, retained: bool) -> None:
        if retained:
            # A retained command would run again on every reconnect.
            self._reject(name[:64], "retained commands are refused: publish without the retain flag", None)
            return
        try:
            request = parse_payload(name, payload, self._cfg.max_payload_bytes)
        except PayloadError as exc:
            self._reject(name[:64], str(exc), exc.transaction)
            return
        command = Command(request.command, request.value, request.transaction, source="mqtt")
        with self._lock:
            self._pending.append(_Pending(command, time.monotonic() + self._cfg.command_timeout_s))
        if self._bus is not None:
            self._bus.publish(command)

    def _reject(self, name: str, error: str, transaction: str | None) -> None:
        held = self._bad_input_log()
        if held is not None:
            log.warning("mqtt: refused set/%s: %s%s", name, error, f" ({held} more held back)" if held else "")
        self._respond(name, False, error, transaction)
        self._event({"event": "error", "source": "mqtt", "command": name, "error": error,
                     "transaction": transaction})

    def _respond(self, name: str, ok: bool, error: str, transaction: str | None,
                 data: dict[str, Any] | None = None) -> None:
        body = response_payload(name, ok, error, transaction, data)
        self._publish(RESPONSE, json.dumps(body, ensure_ascii=False, default=str))

    def _take_pending(self, command: Command) -> bool:
        with self._lock:
            for i, pending in enumerate(self._pending):
                if pending.command is command:
                    del self._pending[i]
                    return True
            for i, pending in enumerate(self._pending):
                if pending.command == command:
                    del self._pending[i]
                    return True
        return False

    def _tick(self) -> None:
        next_stats = time.monotonic() + self._cfg.stats_interval_s
        while not self._stopping.wait(0.25):
            now = time.monotonic()
            with self._lock:
                expired = [p for p in self._pending if p.deadline <= now]
                self._pending = [p for p in self._pending if p.deadline > now]
            for pending in expired:
                owner = COMMANDS[pending.command.name].owner
                error = f"no answer from the {owner} within {self._cfg.command_timeout_s:g} s"
                self._respond(pending.command.name, False, error, pending.command.transaction)
                self._error(f"{pending.command.name}: {error}", "mqtt", pending.command)
            if now >= next_stats:
                next_stats = now + self._cfg.stats_interval_s
                self._publish(STATS, json.dumps(self._stats()))

    # -- events from the bus (the output's own thread) --

    def handle(self, event: object) -> None:
        if isinstance(event, CommandResult):
            self._on_result(event)
        elif isinstance(event, MoodChanged):
            self._on_mood(event)
        elif isinstance(event, PipelineStats):
            self._on_pipeline(event)
        elif isinstance(event, CameraState):
            camera = "off" if event.state == "off" else "on"
            self._update(camera=camera, camera_state=event.state)
            if event.state == "camera_lost":
                self._error(f"camera lost{': ' + event.detail if event.detail else ''}", "camera")
        elif isinstance(event, ComponentState):
            if event.error and event.component != "mqtt":
                self._error(f"{event.component} {event.state}{': ' + event.detail if event.detail else ''}",
                            event.component)
        elif isinstance(event, ModelLoaded):
            self._update(model={"version": event.version, "accuracy": event.accuracy})
        elif isinstance(event, TrackStarted):
            self._on_track_started(event)
        elif isinstance(event, TrackFinished):
            self._on_track_finished(event)
        elif isinstance(event, PlaybackState):
            self._on_playback(event)
        elif isinstance(event, Feedback):
            self._on_feedback(event)
        # Anything else (FaceReading, Command, Shutdown, events added later) has nothing to publish.

    def _on_result(self, result: CommandResult) -> None:
        command = result.command
        if command.source == "mqtt":
            if self._take_pending(command):
                self._respond(command.name, result.ok, result.error, command.transaction, result.data)
                if not result.ok:
                    self._error(f"{command.name}: {result.error or 'failed'}", "mqtt", command)
            else:
                log.info("mqtt: late answer to %s (transaction %s) after its timeout", command.name,
                         command.transaction)
        if not result.ok:
            return
        # State follows what the owners report (their events, or these keys in a result's data),
        # never what was merely asked for.
        confirmed = {k: result.data[k] for k in OWNER_STATE_KEYS if k in result.data}
        if confirmed:
            self._update(**confirmed)

    def _on_mood(self, event: MoodChanged) -> None:
        self._update(mood=event.mood, confidence=round(event.confidence, 4),
                     probabilities={k: round(v, 4) for k, v in event.probabilities.items()},
                     since=_now_iso(event.since), override=event.override)
        self._publish_mood()
        self._event({"event": "mood_changed", "mood": event.mood, "previous": event.previous,
                     "confidence": round(event.confidence, 4), "override": event.override})

    def _on_pipeline(self, event: PipelineStats) -> None:
        with self._lock:
            self._figures = {"fps": round(event.fps, 2), "capture_ms": round(event.capture_ms, 2),
                             "detect_ms": round(event.detect_ms, 2), "classify_ms": round(event.classify_ms, 2),
                             "frames": event.frames, "faces": event.faces}
            changed = self._state["face"] != event.face_present
        if changed:  # stats arrive every few seconds; the retained state changes only with the face
            self._update(face=event.face_present)

    def _on_track_started(self, event: TrackStarted) -> None:
        playing = {"track": event.name, "artists": event.artists, "album": event.album, "playlist": event.playlist,
                   "uri": event.uri}
        self._update(playing=playing, policy=event.policy)
        self._event({"event": "track_started", **playing, "policy": event.policy, "target": event.target,
                     "mood": event.mood})

    def _on_track_finished(self, event: TrackFinished) -> None:
        self._event({"event": "track_finished", "track": event.name, "uri": event.uri,
                     "mood_before": event.mood_before, "mood_during": event.mood_during,
                     "mood_after": event.mood_after, "improved": event.improved, "completed": event.completed,
                     "feedback": event.feedback, "played_s": round(event.played_s, 1)})

    def _on_playback(self, event: PlaybackState) -> None:
        playing = None
        if event.playing:
            playing = {"track": event.track, "artists": event.artists, "album": event.album,
                       "playlist": event.playlist, "device": event.device}
        changes: dict[str, Any] = {"playing": playing, "policy": event.policy}
        if event.volume is not None:
            changes["volume"] = event.volume
        self._update(**changes)

    def _on_feedback(self, event: Feedback) -> None:
        self._event({"event": "feedback", "value": event.value, "track": event.track, "uri": event.track_uri,
                     "playlist_uri": event.playlist_uri, "mood": event.mood, "source": event.source})

    # -- publishing --

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes)
        self._publish_state()

    def _publish_state(self) -> None:
        with self._send_lock:
            with self._lock:
                body = json.dumps(self._state, ensure_ascii=False, default=str)
            self._publish(STATE, body)

    def _publish_mood(self) -> None:
        with self._send_lock:
            with self._lock:
                mood = self._state["mood"]
            # No mood yet (a fresh start): clear the retained one rather than leave a stale mood standing.
            self._publish(MOOD, mood or "")

    def _error(self, text: str, source: str, command: Command | None = None) -> None:
        at = _now_iso()
        self._update(last_error={"text": text, "source": source, "at": at})
        event = {"event": "error", "source": source, "error": text}
        if command is not None:
            event.update(command=command.name, transaction=command.transaction)
        self._event(event)

    def _event(self, body: dict[str, Any]) -> None:
        body.setdefault("at", _now_iso())
        self._publish(EVENTS, json.dumps(body, ensure_ascii=False, default=str))

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            figures = dict(self._figures)
            model = self._state["model"]
        empty = dict.fromkeys(("fps", "capture_ms", "detect_ms", "classify_ms", "frames", "faces"))
        return {**empty, **figures, "cpu_temp_c": read_cpu_temp(self._thermal),
                "uptime_s": int(time.monotonic() - self._started), "model": model}

    def _announce(self) -> None:
        """Availability, discovery and the retained snapshots: on connect and when HA comes online."""
        client = self._client
        client.publish(topic(self._id.base, AVAILABILITY), ONLINE, qos=AVAILABILITY.qos, retain=True)
        for discovery_topic, payload in self._discovery:
            client.publish(discovery_topic, payload, qos=1, retain=True)
        self._publish_state()
        self._publish_mood()

    def _publish(self, which: Topic, payload: str) -> None:
        # Not connected: QoS 0 is dropped (retained topics are re-sent on connect), QoS 1 waits in paho's queue.
        self._client.publish(topic(self._id.base, which), payload, qos=which.qos, retain=which.retained)

    def _set_health(self, state: str, detail: str) -> None:
        """Tell the bus once per change (the log output writes the line; a retry loop repeats nothing)."""
        with self._lock:
            if state == self._health:
                return
            self._health = state
        if self._bus is not None:
            self._bus.publish(ComponentState(component="mqtt", state=state, detail=detail, error=state != "ok"))


def build(cfg: MqttConfig, box_id: str, version: str = __version__,
          resolve: Callable[[str], Path] = Path, thermal: Path = THERMAL_ZONE) -> MqttOutput:
    """An MqttOutput for ``box_id`` from ``[mqtt]`` (enabled or not): tests and tools use this."""
    base = cfg.base_topic.replace("{box_id}", box_id)
    identity = Identity(box_id=box_id, base=base, prefix=cfg.discovery_prefix, version=version,
                        stats_interval_s=cfg.stats_interval_s)
    return MqttOutput(cfg, identity, cfg.client_id or f"moodbox-{box_id}", resolve=resolve, thermal=thermal)


def create(config: Config, context) -> MqttOutput | None:
    if not config.mqtt.enabled:
        return None
    # The daemon fills context.box_id with device.topics.box_id(config); a bare context derives it here.
    this_box = sanitize_box_id(context.box_id) or box_id_for(config)
    return build(config.mqtt, this_box, context.version or __version__, resolve=config.resolve)
