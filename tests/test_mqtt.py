"""The MQTT output against a real mosquitto, watched by a second paho client.

Every wait is on a condition with a timeout; no test sleeps a fixed time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from broker import Broker, Message, Observer, make_certs, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mqtt_topics import assert_in_domain, check_device_discovery

from device.bus import Bus
from device.config import MqttConfig
from device.discovery import ENTITIES, Identity, discovery_messages, entity_topic
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
from device.outputs.eventlog import LogOutput
from device.outputs.mqtt import MqttOutput, build
from device.topics import COMMANDS, MoodOverride

REPO = Path(__file__).resolve().parent.parent


class Owner:
    """Answers Commands on the bus the way the daemon and the music engine do."""

    name = "owner"

    def __init__(self, fail: frozenset[str] = frozenset(), silent: frozenset[str] = frozenset(),
                 data: dict | None = None) -> None:
        self.commands = frozenset(COMMANDS) - silent
        self.fail = fail
        self.data = data or {}
        self.received: list[Command] = []
        self.bus: Bus | None = None

    def start(self, bus: Bus) -> None:
        self.bus = bus

    def handle(self, event: object) -> None:
        if isinstance(event, Command) and event.name in self.commands:
            self.received.append(event)
            ok = event.name not in self.fail
            self.bus.publish(CommandResult(event, ok=ok, error="" if ok else f"{event.name} refused by the owner",
                                           data=self.data.get(event.name, {})))

    def stop(self) -> None:
        pass


@dataclass
class Box:
    output: MqttOutput
    bus: Bus
    owner: Owner
    events: list = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.output._id.base

    def commands(self) -> list[Command]:
        return [e for e in self.events if isinstance(e, Command)]

    def health(self) -> list[ComponentState]:
        return [e for e in self.events if isinstance(e, ComponentState) and e.component == "mqtt"]


def config(broker: Broker, **overrides) -> MqttConfig:
    values = {"enabled": True, "host": broker.host, "port": broker.port, "reconnect_min_s": 1, "reconnect_max_s": 2}
    return MqttConfig(**{**values, **overrides})


@contextmanager
def running(cfg: MqttConfig, box_id: str = "testbox", owner: Owner | None = None, wait: bool = True,
            extra: tuple = (), **build_args) -> Iterator[Box]:
    bus = Bus()
    box = Box(build(cfg, box_id, **build_args), bus, owner or Owner())
    bus.listen(box.events.append)
    for output in (box.owner, *extra):
        bus.attach(output)
    bus.attach(box.output)
    try:
        if wait:  # connected, announced, and said so on the bus
            wait_for(lambda: [h.state for h in box.health()] == ["ok"], what="the output to connect")
        yield box
    finally:
        bus.stop()


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running_broker:
        yield running_broker


@pytest.fixture
def observer(broker) -> Iterator[Observer]:
    with Observer(broker) as watching:
        yield watching


def retained(broker: Broker) -> dict[str, Message]:
    with Observer(broker) as fresh:
        return fresh.retained()


def mood(name: str = "happy", confidence: float = 0.8) -> MoodChanged:
    return MoodChanged(name, "neutral", confidence, {"happy": confidence, "neutral": 1 - confidence}, 1_700_000_000.0)


# --- announcing -------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_announces_availability_discovery_and_state(broker, observer, protocol):
    with running(config(broker, protocol=protocol), "a1b2c3d4") as box:
        observer.wait("moodbox/a1b2c3d4/availability", lambda m: m.text == "online")
        message = observer.wait("homeassistant/device/a1b2c3d4/config")
        identity = Identity("a1b2c3d4", "moodbox/a1b2c3d4", "homeassistant", box.output._id.version)
        check_device_discovery(message.topic, message.json(), identity)
        assert message.json() == json.loads(discovery_messages(identity, "device")[0][1])
        state = observer.wait("moodbox/a1b2c3d4/state").json()
        assert state["mood"] is None and state["playing"] is None
        assert [h.state for h in box.health()] == ["ok"]
        snapshot = retained(broker)
        assert snapshot["moodbox/a1b2c3d4/availability"].text == "online"
        assert "homeassistant/device/a1b2c3d4/config" in snapshot and "moodbox/a1b2c3d4/state" in snapshot


def test_per_entity_mode_then_device_mode_clears_the_stale_entities(broker, observer):
    with running(config(broker, discovery="per_entity"), "box1"):
        for entity in ENTITIES:
            payload = observer.wait(entity_topic("homeassistant", "box1", entity)).json()
            assert payload["unique_id"] == f"moodbox_box1_{entity.key}" and payload["o"]["name"] == "moodbox"
    assert len([t for t in retained(broker) if t.startswith("homeassistant/")]) == len(ENTITIES)
    with running(config(broker, discovery="device"), "box1"):
        observer.wait("homeassistant/device/box1/config", lambda m: bool(m.payload))
        for entity in ENTITIES:
            observer.wait(entity_topic("homeassistant", "box1", entity), lambda m: m.payload == b"")
        discovery = [t for t in retained(broker) if t.startswith("homeassistant/")]
        assert discovery == ["homeassistant/device/box1/config"]


def test_home_assistant_online_triggers_a_new_announcement(broker, observer):
    with running(config(broker), "box1") as box:
        box.bus.publish(mood())
        observer.wait("moodbox/box1/mood", lambda m: m.text == "happy")
        after = observer.mark()
        observer.publish("homeassistant/status", "online")
        observer.wait("homeassistant/device/box1/config", after=after)
        observer.wait("moodbox/box1/state", lambda m: m.json()["mood"] == "happy", after=after)
        observer.wait("moodbox/box1/availability", lambda m: m.text == "online", after=after)
        before = observer.mark()
        observer.publish("homeassistant/status", "offline")
        observer.sync()
        assert observer.count("homeassistant/device/box1/config", after=before) == 0


# --- availability -----------------------------------------------------------


def test_graceful_stop_says_offline(broker, observer):
    with running(config(broker), "box1"):
        observer.wait("moodbox/box1/availability", lambda m: m.text == "online")
    observer.wait("moodbox/box1/availability", lambda m: m.text == "offline")
    assert retained(broker)["moodbox/box1/availability"].text == "offline"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_kill_9_leaves_the_last_will(broker, observer, protocol):
    script = textwrap.dedent(f"""
        import threading
        from device.bus import Bus
        from device.config import MqttConfig
        from device.outputs.mqtt import build
        cfg = MqttConfig(enabled=True, host={broker.host!r}, port={broker.port}, protocol={protocol!r})
        Bus().attach(build(cfg, "doomed"))
        print("started", flush=True)
        threading.Event().wait()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    try:
        observer.wait("moodbox/doomed/availability", lambda m: m.text == "online", timeout=30)
        after = observer.mark()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        observer.wait("moodbox/doomed/availability", lambda m: m.text == "offline", after=after)
        assert retained(broker)["moodbox/doomed/availability"].text == "offline"
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)


# --- state ------------------------------------------------------------------


def test_state_mood_and_events_follow_the_bus(broker, observer, tmp_path):
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n")
    with running(config(broker, stats_interval_s=1), "box1", thermal=thermal) as box:
        bus = box.bus
        bus.publish(ModelLoaded("models/m.tflite", "20260101-abc", "f" * 64, 0.712))
        bus.publish(PipelineStats(fps=4.9, capture_ms=3.2, detect_ms=14.4, classify_ms=0.5, frames=100, faces=90,
                                  face_present=True))
        bus.publish(mood("happy", 0.83))
        bus.publish(CameraState("ok"))
        bus.publish(TrackStarted(uri="spotify:track:1", name="Here Comes the Sun", artists="The Beatles",
                                 album="Abbey Road", duration_ms=185000, playlist="Uplift", playlist_uri="pl:1",
                                 policy="uplift", target="energetic", mood="happy", started=1_700_000_000.0))
        bus.publish(PlaybackState(playing=True, track="Here Comes the Sun", artists="The Beatles",
                                  album="Abbey Road", playlist="Uplift", policy="uplift", target="energetic",
                                  device="moodbox", volume=40, duration_ms=185000, progress_ms=0,
                                  updated=1_700_000_000.0))
        bus.publish(Feedback("like", "spotify:track:1", "Here Comes the Sun", "pl:1", "sad", source="mqtt"))
        bus.publish(TrackFinished(uri="spotify:track:1", name="Here Comes the Sun", playlist_uri="pl:1",
                                  mood_before="sad", mood_during="neutral", mood_after="happy", improved=True,
                                  completed=True, feedback="like", played_s=185.0))
        bus.publish(ComponentState("spotify", "premium_required", "playback needs Premium", error=True))

        def full(m: Message) -> bool:
            s = m.json()
            return s["last_error"] is not None and s["playing"] is not None and s["model"] is not None
        state = observer.wait("moodbox/box1/state", full).json()
        assert (state["mood"], state["confidence"], state["face"], state["camera"], state["policy"],
                state["volume"]) == ("happy", 0.83, True, "on", "uplift", 40)
        assert state["probabilities"] == {"happy": 0.83, "neutral": 0.17}
        assert state["since"] == "2023-11-14T22:13:20+00:00"
        assert state["playing"]["track"] == "Here Comes the Sun" and state["playing"]["artists"] == "The Beatles"
        assert state["model"] == {"version": "20260101-abc", "accuracy": 0.712}
        assert state["last_error"]["text"] == "spotify premium_required: playback needs Premium"
        observer.wait("moodbox/box1/mood", lambda m: m.text == "happy")
        events = {}
        for kind in ("mood_changed", "track_started", "feedback", "track_finished", "error"):
            events[kind] = observer.wait("moodbox/box1/events", lambda m, k=kind: m.json()["event"] == k).json()
        assert (events["track_finished"]["mood_before"], events["track_finished"]["mood_after"]) == ("sad", "happy")
        assert events["mood_changed"]["previous"] == "neutral"
        assert events["feedback"]["value"] == "like" and events["feedback"]["track"] == "Here Comes the Sun"
        assert (events["feedback"]["mood"], events["feedback"]["source"]) == ("sad", "mqtt")
        stats = observer.wait("moodbox/box1/stats", lambda m: m.json()["fps"] is not None).json()
        assert (stats["fps"], stats["detect_ms"], stats["classify_ms"], stats["cpu_temp_c"]) == (4.9, 14.4, 0.5, 48.3)
        assert stats["model"]["version"] == "20260101-abc" and stats["uptime_s"] >= 0

        bus.publish(CameraState("off"))
        observer.wait("moodbox/box1/state", lambda m: m.json()["camera"] == "off")
        bus.publish(PlaybackState(playing=False, track="", artists="", album="", playlist="", policy="uplift",
                                  target="", device="moodbox", volume=40, duration_ms=0, progress_ms=0, updated=0.0))
        observer.wait("moodbox/box1/state", lambda m: m.json()["playing"] is None)


def test_retained_state_for_late_subscribers_and_after_a_daemon_restart(broker, observer):
    with running(config(broker), "box1") as box:
        box.bus.publish(mood("sad", 0.7))
        observer.wait("moodbox/box1/mood", lambda m: m.text == "sad")  # published right after the state
        snapshot = retained(broker)  # Home Assistant connecting now sees all of it at once
        assert snapshot["moodbox/box1/mood"].text == "sad"
        assert snapshot["moodbox/box1/state"].json()["confidence"] == 0.7
        assert snapshot["moodbox/box1/availability"].text == "online"
    assert retained(broker)["moodbox/box1/mood"].text == "sad"  # kept while the box is away
    after = observer.mark()
    with running(config(broker), "box1"):
        # A new daemon knows no mood yet: it says so rather than leaving a stale one retained.
        observer.wait("moodbox/box1/mood", lambda m: m.payload == b"", after=after)
        snapshot = retained(broker)
        assert "moodbox/box1/mood" not in snapshot
        assert snapshot["moodbox/box1/state"].json()["mood"] is None


def test_broker_restart_while_running_republishes_everything(broker):
    with running(config(broker), "box1") as box:
        box.bus.publish(mood("angry", 0.9))
        with Observer(broker) as watching:
            watching.wait("moodbox/box1/state", lambda m: m.json()["mood"] == "angry")
        broker.restart()  # persistence is off: the broker forgets every retained message
        wait_for(lambda: [h.state for h in box.health()][-2:] == ["unreachable", "ok"], timeout=20,
                 what="unreachable, then ok again")
        box.bus.publish(PipelineStats(5.0, 1.0, 10.0, 0.5, 10, 10, face_present=True))
        with Observer(broker) as watching:
            watching.wait("moodbox/box1/state", lambda m: m.json()["face"] is True)
        snapshot = retained(broker)
        assert snapshot["moodbox/box1/availability"].text == "online"
        assert snapshot["moodbox/box1/mood"].text == "angry"
        assert snapshot["moodbox/box1/state"].json()["mood"] == "angry"
        assert "homeassistant/device/box1/config" in snapshot


def test_broker_down_at_start_then_up(tmp_path):
    broker = Broker(tmp_path / "late")
    try:
        with running(config(broker), "box1", wait=False) as box:
            wait_for(lambda: box.output.health == "unreachable", what="unreachable")
            assert box.health()[-1].error and "cannot connect to 127.0.0.1" in box.health()[-1].detail
            box.bus.publish(mood("surprise", 0.6))  # the daemon goes on while the broker is away
            broker.start()
            wait_for(lambda: box.output.health == "ok", timeout=20, what="the late connection")  # announced
            snapshot = retained(broker)
            assert snapshot["moodbox/box1/state"].json()["mood"] == "surprise"
            assert snapshot["moodbox/box1/availability"].text == "online"
    finally:
        broker.stop()


# --- commands ---------------------------------------------------------------

ROUND_TRIPS = [
    ("play", "", None),
    ("pause", "PRESS", None),
    ("next", "", None),
    ("policy", "iso", "iso"),
    ("volume", "35", 35),
    ("feedback", "dislike", "skip"),
    ("camera", "off", False),
    ("reload_model", "", None),
    ("mood", "fear 10", MoodOverride("fear", 10)),
    ("mood", "clear", None),
]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_every_command_round_trip(broker, observer, protocol):
    with running(config(broker, protocol=protocol), "box1") as box:
        for number, (name, plain, value) in enumerate(ROUND_TRIPS):
            for payload, transaction in ((plain, None), (json.dumps({"value": plain, "transaction": f"t{number}"}),
                                                         f"t{number}")):
                after = observer.mark()
                observer.publish(f"moodbox/box1/set/{name}", payload)
                response = observer.wait("moodbox/box1/response", after=after).json()
                assert response == {"command": name, "status": "ok", "transaction": transaction, "error": "",
                                    "data": {}}
                assert box.owner.received[-1] == Command(name, value, transaction, source="mqtt")
        assert {c.name for c in box.owner.received} == set(COMMANDS)


def test_owner_errors_and_silence_become_error_responses(broker, observer):
    owner = Owner(fail=frozenset({"next"}), silent=frozenset({"reload_model"}),
                  data={"policy": {"policy": "match"}})
    # Long enough for a loaded CI machine to answer "next", short enough to wait for reload_model's timeout.
    with running(config(broker, command_timeout_s=3), "box1", owner=owner):
        observer.publish("moodbox/box1/set/next", '{"transaction": "n1"}')
        response = observer.wait("moodbox/box1/response", lambda m: m.json()["transaction"] == "n1").json()
        assert (response["status"], response["error"]) == ("error", "next refused by the owner")
        observer.wait("moodbox/box1/events", lambda m: m.json().get("transaction") == "n1")
        observer.publish("moodbox/box1/set/reload_model", '{"transaction": "r1"}')
        response = observer.wait("moodbox/box1/response", lambda m: m.json()["transaction"] == "r1").json()
        assert response["error"] == "no answer from the daemon within 3 s"
        observer.publish("moodbox/box1/set/policy", "match")
        observer.wait("moodbox/box1/state", lambda m: m.json()["policy"] == "match")  # confirmed by the owner


BAD_INPUT = [
    ("bogus", b"1", "unknown command 'bogus'"),
    ("policy", b'{"value": "iso"', "malformed JSON"),
    ("volume", b"x" * 2000, "payload too large: 2000 bytes"),
    ("volume", b'{"value": 150, "transaction": "v"}', "volume: must be a whole number from 0 to 100"),
    ("camera", b"\xff\xfe\xfd", "not UTF-8"),
    ("policy", b'{"value": "iso", "extra": 1}', "unknown key(s) extra"),
]


def test_bad_input_gets_an_error_response_and_event_and_changes_nothing(broker, observer, caplog):
    caplog.set_level(logging.WARNING, logger="device.outputs.mqtt")
    with running(config(broker), "box1") as box:
        box.bus.publish(mood())
        state_before = observer.wait("moodbox/box1/state", lambda m: m.json()["mood"] == "happy").payload
        for name, payload, error in BAD_INPUT:
            after = observer.mark()
            observer.publish(f"moodbox/box1/set/{name}", payload)
            response = observer.wait("moodbox/box1/response", after=after).json()
            assert response["status"] == "error" and error in response["error"], response
            assert response["command"] == name
            event = observer.wait("moodbox/box1/events", lambda m: m.json()["event"] == "error", after=after).json()
            assert error in event["error"] and event["source"] == "mqtt"
        observer.sync()
        assert box.commands() == [] and box.owner.received == []
        assert box.output.connected
        with Observer(broker) as fresh:
            assert fresh.retained()["moodbox/box1/state"].payload == state_before
        assert "refused set/bogus" in caplog.text


def test_a_retained_command_is_refused_not_replayed(broker, observer):
    # Live subscribers get it with retain=0 (MQTT 3.1.1); the danger is the replay on every (re)connect.
    observer.publish("moodbox/box1/set/camera", "off", retain=True)
    try:
        with running(config(broker), "box1") as box:
            response = observer.wait("moodbox/box1/response").json()
            assert response["status"] == "error" and "retained commands are refused" in response["error"]
            observer.sync()
            assert box.commands() == []
    finally:
        observer.publish("moodbox/box1/set/camera", b"", retain=True)


# --- auth and TLS -----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_wrong_password_gives_auth_failed_and_a_clear_log_line(tmp_path, caplog, protocol):
    caplog.set_level(logging.DEBUG)
    with Broker(tmp_path / "auth", users={"moodbox": "right-horse"}) as broker:
        cfg = config(broker, username="moodbox", password="wrong-battery-staple", protocol=protocol)
        with running(cfg, "box1", wait=False, extra=(LogOutput(),)) as box:  # the daemon's log output writes it
            wait_for(lambda: box.health(), what="an mqtt ComponentState")
            (state,) = box.health()
            assert (state.component, state.state, state.error) == ("mqtt", "auth_failed", True)
            assert "refused user 'moodbox'" in state.detail and "Not authorized" in state.detail
            wait_for(lambda: "mqtt auth_failed" in caplog.text, what="the log line")
            wait_for(lambda: box.output._client._reconnect_delay, what="a retry")  # paho retried at least once
            assert not box.output.connected
        lines = [r.getMessage() for r in caplog.records if "auth_failed" in r.getMessage()]
        assert len(lines) == 1, "a retry loop must not repeat the log line"
        assert "check mqtt.username and the password" in lines[0]
        assert "wrong-battery-staple" not in caplog.text and "right-horse" not in caplog.text
        with running(config(broker, username="moodbox", password="right-horse", protocol=protocol), "box1") as box:
            assert box.output.connected


def test_tls_with_ca_and_client_certificate(tmp_path):
    certs = make_certs(tmp_path / "certs")
    with Broker(tmp_path / "tls", certs=certs) as broker:
        cfg = config(broker, port=broker.tls_port, tls_ca=str(certs.ca), tls_cert=str(certs.client_cert),
                     tls_key=str(certs.client_key))
        with Observer(broker) as watching, running(cfg, "secure") as box:
            watching.wait("moodbox/secure/availability", lambda m: m.text == "online")
            watching.publish("moodbox/secure/set/volume", '{"value": 20, "transaction": "tls"}')
            assert watching.wait("moodbox/secure/response").json()["transaction"] == "tls"
            assert box.output.health == "ok"
        wrong_ca = config(broker, port=broker.tls_port, tls_ca=str(certs.ca.parent / "rogue-ca.crt"),
                          tls_cert=str(certs.client_cert), tls_key=str(certs.client_key))
        with running(wrong_ca, "secure", wait=False) as box:
            wait_for(lambda: box.output.health == "unreachable", what="a refused server certificate")
            assert "CERTIFICATE_VERIFY_FAILED" in box.health()[-1].detail
        rogue_client = config(broker, port=broker.tls_port, tls_ca=str(certs.ca), tls_cert=str(certs.rogue_cert),
                              tls_key=str(certs.rogue_key))
        with running(rogue_client, "secure", wait=False) as box:
            wait_for(lambda: box.output.health == "unreachable", what="a refused client certificate")
            assert not box.output.connected
        with pytest.raises(ValueError, match="mqtt.tls_ca: .* is not a readable file"):
            build(config(broker, tls_ca=str(tmp_path / "missing.pem")), "secure")


# --- two boxes, and forget --------------------------------------------------


def test_two_boxes_on_one_broker_do_not_interfere(broker, observer):
    with running(config(broker), "kitchen") as kitchen, running(config(broker), "bedroom") as bedroom:
        kitchen.bus.publish(mood("happy"))
        bedroom.bus.publish(mood("sad"))
        observer.publish("moodbox/kitchen/set/volume", '{"value": 10, "transaction": "k"}')
        observer.publish("moodbox/bedroom/set/policy", '{"value": "match", "transaction": "b"}')
        assert observer.wait("moodbox/kitchen/response").json()["transaction"] == "k"
        assert observer.wait("moodbox/bedroom/response").json()["transaction"] == "b"
        assert [c.name for c in kitchen.owner.received] == ["volume"]
        assert [c.name for c in bedroom.owner.received] == ["policy"]
        observer.wait("moodbox/kitchen/mood", lambda m: m.text == "happy")
        observer.wait("moodbox/bedroom/mood", lambda m: m.text == "sad")
        kitchen_ids = {c["unique_id"] for c in observer.wait("homeassistant/device/kitchen/config").json()["cmps"]
                       .values()}
        bedroom_ids = {c["unique_id"] for c in observer.wait("homeassistant/device/bedroom/config").json()["cmps"]
                       .values()}
        assert not kitchen_ids & bedroom_ids
    snapshot = retained(broker)
    assert snapshot["moodbox/kitchen/mood"].text == "happy" and snapshot["moodbox/bedroom/mood"].text == "sad"


def write_config(path: Path, broker: Broker, **keys) -> Path:
    lines = ["[mqtt]", "enabled = true", f'host = "{broker.host}"', f"port = {broker.port}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def moodbox(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_mqtt_forget_clears_this_box_only(broker, tmp_path):
    # Another device whose per-entity discovery uses "kitchen" as its node id too.
    foreign_topic = "homeassistant/switch/kitchen/camera/config"
    foreign = json.dumps({"name": "Camera", "unique_id": "tasmota_kitchen_camera", "command_topic": "tasmota/cmnd",
                          "dev": {"identifiers": ["tasmota_ab12"]}})
    with Observer(broker) as setup:
        setup.publish(foreign_topic, foreign, retain=True)
    for box_id in ("kitchen", "bedroom"):
        with running(config(broker, discovery="per_entity" if box_id == "bedroom" else "device"), box_id) as box:
            box.bus.publish(mood())
            with Observer(broker) as watching:
                watching.wait(f"moodbox/{box_id}/mood", lambda m: m.text == "happy")
    before = retained(broker)
    assert {t for t in before if "/kitchen/" in t} >= {"moodbox/kitchen/state", "homeassistant/device/kitchen/config"}
    conf = write_config(tmp_path / "config.toml", broker, box_id="kitchen")
    result = moodbox("mqtt", "forget", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    assert "box kitchen: cleared" in result.stdout
    assert foreign_topic not in result.stdout
    after = retained(broker)
    assert [t for t in after if "kitchen" in t] == [foreign_topic]
    assert after[foreign_topic].text == foreign  # neither the running box nor forget touched it
    assert {t for t in after if "bedroom" in t} == {t for t in before if "bedroom" in t}


def test_mqtt_cli_check_and_forget_report_broker_problems(tmp_path):
    with Broker(tmp_path / "auth", users={"moodbox": "right-horse"}) as broker:
        conf = write_config(tmp_path / "config.toml", broker, username="moodbox")
        wrong = moodbox("mqtt", "forget", "--config", str(conf), env={"MOODBOX_MQTT_PASSWORD": "nope-nope"})
        assert wrong.returncode == 77 and "refused user 'moodbox'" in wrong.stderr
        assert "nope-nope" not in wrong.stderr + wrong.stdout
        ok = moodbox("mqtt", "check", "--config", str(conf), env={"MOODBOX_MQTT_PASSWORD": "right-horse"})
        assert ok.returncode == 0 and "✔ MQTT connected to 127.0.0.1" in ok.stdout
    down = moodbox("mqtt", "check", "--config", str(conf), "--timeout", "2")
    assert down.returncode == 1 and "✖ MQTT cannot connect to 127.0.0.1" in down.stdout


# --- fuzz: every command topic, through the real broker ----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 2000) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
near_valid = st.one_of(
    st.sampled_from(["", "PRESS", "uplift", "ISO", "off", "on", "like", "dislike", "skip", "101", "-1", "clear",
                     "sad 0", "{", "{}", "null", "40.0", " match ", "happy 1441", "true"]),
    st.integers(-5, 105).map(str),
    st.builds("{} {}".format, st.sampled_from(["happy", "sad", "angry", "no_face", "x"]), st.integers(-2, 1500)),
)
payloads = st.one_of(
    near_valid.map(str.encode),
    near_valid.map(lambda v: json.dumps({"value": v, "transaction": "t"}).encode()),
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
    st.builds(lambda v, t: json.dumps({"value": v, "transaction": t}).encode(), json_values,
              st.one_of(st.none(), st.text(max_size=70))),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda d: json.dumps(d).encode()),
    st.binary(min_size=1025, max_size=1500),
)
topic_names = st.one_of(st.sampled_from(sorted(COMMANDS)),
                        st.text(st.characters(categories=["Ll", "Nd"], include_characters="_-"), min_size=1,
                                max_size=12))
no_value = st.sampled_from(["", "PRESS", "press"])
valid_values = {
    "play": no_value, "pause": no_value, "next": no_value, "reload_model": no_value,
    "policy": st.sampled_from(["uplift", "match", "iso", "off", " Match "]),
    "volume": st.integers(0, 100).map(str),
    "feedback": st.sampled_from(["like", "dislike", "skip"]),
    "camera": st.sampled_from(["on", "off", "ON", "false"]),
    "mood": st.one_of(st.just("clear"), st.builds("{} {}".format, st.sampled_from(["happy", "sad", "fear"]),
                                                  st.integers(1, 1440))),
}
valid_messages = st.sampled_from(sorted(valid_values)).flatmap(
    lambda name: st.tuples(st.just(name), st.one_of(
        valid_values[name].map(str.encode),
        st.builds(lambda v, t: json.dumps({"value": v, "transaction": t}).encode(), valid_values[name],
                  st.text(max_size=64)))))
messages = st.one_of(valid_messages, st.tuples(topic_names, payloads))


@pytest.fixture(scope="module")
def fuzz_box(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("fuzz")) as fuzz_broker, Observer(fuzz_broker) as watching:
        with running(config(fuzz_broker), "fuzz") as box:
            box.bus.publish(mood())
            watching.wait("moodbox/fuzz/state", lambda m: m.json()["mood"] == "happy")
            yield fuzz_broker, watching, box


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(batch=st.lists(messages, min_size=5, max_size=40))
def test_fuzzed_payloads_on_every_command_topic(fuzz_box, batch):
    """Each message gets exactly one response; only in-domain Commands reach the bus; the box stays up."""
    fuzz_broker, watching, box = fuzz_box
    responses_before = watching.count("moodbox/fuzz/response")
    commands_before = len(box.commands())
    sent = [watching.publish(f"moodbox/fuzz/set/{name}", payload, wait=False) for name, payload in batch]
    sent[-1].wait_for_publish(10)
    wait_for(lambda: watching.count("moodbox/fuzz/response") >= responses_before + len(batch),
             what=f"{len(batch)} responses")
    responses = [m.json() for m in watching.on("moodbox/fuzz/response")][responses_before:]
    new_commands = box.commands()[commands_before:]
    assert len(responses) == len(batch)
    assert len(new_commands) == sum(r["status"] == "ok" for r in responses)
    for command in new_commands:
        assert command.source == "mqtt"
        assert_in_domain(command.name, command.value)
    assert box.output.connected


def test_after_fuzzing_the_state_is_unchanged(fuzz_box):
    fuzz_broker, watching, box = fuzz_box
    responses = [m.json() for m in watching.on("moodbox/fuzz/response")]
    print(f"fuzz: {len(responses)} messages, {sum(r['status'] == 'ok' for r in responses)} accepted")
    with Observer(fuzz_broker) as fresh:
        state = fresh.retained()["moodbox/fuzz/state"].json()
    assert state["mood"] == "happy" and state["last_error"] is None and state["policy"] is None
    assert state["camera"] is None and state["volume"] is None
    assert box.output.connected and box.output.health == "ok"
