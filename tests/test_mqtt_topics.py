"""The topic/command table, payload validation, box ids, [mqtt] config and HA discovery payloads (no broker)."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.config import ConfigError, MqttConfig, parse_config
from device.discovery import (
    ENTITIES,
    Identity,
    all_discovery_topics,
    discovery_messages,
    entities_markdown,
    is_ours,
)
from device.preprocess import EMOTIONS
from device.topics import (
    COMMANDS,
    MOODS,
    POLICIES,
    STATE,
    STATS,
    TOPICS,
    MoodOverride,
    PayloadError,
    command_name,
    command_topic,
    commands_markdown,
    commands_owned_by,
    derive_box_id,
    parse_payload,
    sanitize_box_id,
    topic,
    topics_markdown,
)

LIMIT = 1024


def parse(name: str, payload: str | bytes):
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse_payload(name, raw, LIMIT)


def refused(name: str, payload: str | bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse(name, payload)
    return caught.value


# --- the table --------------------------------------------------------------


def test_command_owners_match_the_bus_contract():
    assert commands_owned_by("music") == {"play", "pause", "next", "policy", "volume", "feedback"}
    assert commands_owned_by("daemon") == {"camera", "reload_model", "mood"}
    assert set(COMMANDS) == commands_owned_by("music") | commands_owned_by("daemon")


def test_topics_and_retain_flags():
    by_key = {t.key: t for t in TOPICS}
    assert {k for k, t in by_key.items() if t.retained} == {"availability", "state", "mood"}
    assert not by_key["set"].retained and not by_key["events"].retained and not by_key["stats"].retained
    assert topic("moodbox/abc", STATE) == "moodbox/abc/state"
    assert command_topic("moodbox/abc", "volume") == "moodbox/abc/set/volume"
    assert command_name("moodbox/abc", "moodbox/abc/set/volume") == "volume"
    assert command_name("moodbox/abc", "moodbox/abcd/set/volume") is None


def test_readme_tables_are_generated_from_the_table():
    topics_md, commands_md, entities_md = topics_markdown(), commands_markdown(), entities_markdown()
    for t in TOPICS:
        assert f"`moodbox/<box_id>/{t.suffix}`" in topics_md
    for name in COMMANDS:
        assert f"`set/{name}`" in commands_md
    for entity in ENTITIES:
        assert f"{entity.platform}.moodbox_<box_id>_{entity.key}" in entities_md
    for table in (topics_md, commands_md, entities_md):
        widths = {line.count("|") - line.count("\\|") for line in table.splitlines()}
        assert len(widths) == 1, "a cell breaks its markdown table"


# --- payloads ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "payload", "value", "transaction"), [
    ("play", "", None, None),
    ("play", "PRESS", None, None),
    ("pause", '{"transaction": "t1"}', None, "t1"),
    ("next", '{"value": null, "transaction": "n"}', None, "n"),
    ("reload_model", "press", None, None),
    ("policy", "uplift", "uplift", None),
    ("policy", "  ISO \n", "iso", None),
    ("policy", '{"value": "match", "transaction": "abc"}', "match", "abc"),
    ("volume", "0", 0, None),
    ("volume", "100", 100, None),
    ("volume", "40.0", 40, None),
    ("volume", '{"value": 55}', 55, None),
    ("volume", '{"value": 55.0, "transaction": "v"}', 55, "v"),
    ("feedback", "like", "like", None),
    ("feedback", '{"value": "dislike"}', "skip", None),
    ("feedback", "skip", "skip", None),
    ("camera", "off", False, None),
    ("camera", "ON", True, None),
    ("camera", '{"value": false}', False, None),
    ("camera", "true", True, None),
    ("mood", "clear", None, None),
    ("mood", " CLEAR ", None, None),
    ("mood", "happy", MoodOverride("happy", 30), None),
    ("mood", "Sad 15", MoodOverride("sad", 15), None),
    ("mood", '{"value": {"mood": "angry", "minutes": 1440}, "transaction": "m"}', MoodOverride("angry", 1440), "m"),
    ("mood", '{"value": "neutral 5"}', MoodOverride("neutral", 5), None),
])
def test_valid_payloads(name, payload, value, transaction):
    request = parse(name, payload)
    assert (request.command, request.value, request.transaction) == (name, value, transaction)


@pytest.mark.parametrize(("name", "payload", "message"), [
    ("bogus", "1", "unknown command 'bogus'; known: play, pause"),
    ("volume", "101", "volume: must be a whole number from 0 to 100"),
    ("volume", "-1", "volume: must be a whole number from 0 to 100"),
    ("volume", "40.5", "volume: must be a whole number"),
    ("volume", "NaN", "volume: must be a whole number"),
    ("volume", '{"value": true}', "volume: must be a whole number"),
    ("volume", '{"value": NaN}', "volume: must be a whole number"),
    ("volume", '{"value": 1e999}', "volume: must be a whole number"),
    ("volume", "4_0", "volume: must be a whole number"),
    ("volume", "٤٠", "volume: must be a whole number"),  # Arabic-Indic digits: int() takes them, we do not
    ("policy", "chaos", "policy: must be one of uplift, match, iso, off"),
    ("policy", '{"value": ["uplift"]}', "policy: must be one of"),
    ("camera", "maybe", "camera: must be on or off"),
    ("camera", '{"value": 1}', "camera: must be on or off"),
    ("feedback", "meh", "feedback: must be like or dislike (skip)"),
    ("pause", "now", "pause: takes no value"),
    ("mood", "furious", "mood: must be clear, a mood"),
    ("mood", "happy 0", "mood: minutes must be a whole number from 1 to 1440"),
    ("mood", "happy 1441", "minutes must be a whole number from 1 to 1440"),
    ("mood", "happy 30 extra", "mood: must be clear"),
    ("mood", "no_face 10", "mood: must be clear"),  # an override names a real emotion
    ("mood", '{"value": {"mood": "happy", "hours": 2}}', 'as JSON must be {"mood"'),
    ("policy", '{"value": "iso"', "malformed JSON"),
    ("policy", '{"value": "iso", "transation": "x"}', "unknown key(s) transation"),
    ("policy", '{"value": "iso", "transaction": 5}', "transaction must be a string"),
    ("policy", '{"value": "iso", "transaction": "' + "x" * 65 + '"}', "at most 64 characters"),
    ("policy", b"\xff\xfe", "payload is not UTF-8 text"),
    ("policy", "x" * (LIMIT + 1), f"payload too large: {LIMIT + 1} bytes, limit {LIMIT}"),
])
def test_refused_payloads_say_why(name, payload, message):
    assert message in str(refused(name, payload))


def test_deeply_nested_json_is_refused_not_crashing():
    payload = ('{"value": ' + "[" * 20000 + "]" * 20000 + "}").encode()
    with pytest.raises(PayloadError, match="malformed JSON: nested too deeply"):
        parse_payload("policy", payload, 65536)


def test_transaction_is_kept_for_refused_values():
    error = refused("volume", '{"value": 300, "transaction": "t-42"}')
    assert error.transaction == "t-42"
    assert refused("volume", '{"value": 300}').transaction is None


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none()))
def test_volume_accepts_exactly_whole_numbers_0_to_100(number):
    payload = json.dumps({"value": number}).encode()
    whole = (not isinstance(number, bool) and isinstance(number, int | float) and math.isfinite(number)
             and float(number).is_integer() and 0 <= number <= 100)
    if whole:
        assert parse_payload("volume", payload, LIMIT).value == int(number)
    else:
        with pytest.raises(PayloadError):
            parse_payload("volume", payload, LIMIT)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=30))
def test_policy_accepts_exactly_the_four_policies(text):
    expected = text.strip().lower()
    if text.strip().startswith("{"):
        return  # that is a JSON payload: covered by the JSON cases
    if expected in POLICIES:
        assert parse_payload("policy", text.encode(), LIMIT).value == expected
    else:
        with pytest.raises(PayloadError):
            parse_payload("policy", text.encode(), LIMIT)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(COMMANDS)),
       payload=st.one_of(
           st.binary(max_size=80),
           st.text(max_size=60).map(str.encode),
           st.builds(lambda v, t: json.dumps({"value": v, "transaction": t}).encode(), json_values,
                     st.one_of(st.none(), st.text(max_size=70), st.integers())),
           st.dictionaries(st.text(max_size=12), json_values, max_size=4).map(lambda d: json.dumps(d).encode()),
       ))
def test_any_payload_is_a_typed_value_or_a_payload_error(name, payload):
    """Nothing but PayloadError escapes, and whatever is accepted lies in the command's domain."""
    try:
        request = parse_payload(name, payload, LIMIT)
    except PayloadError as exc:
        assert str(exc)
        return
    assert_in_domain(name, request.value)
    assert request.transaction is None or (isinstance(request.transaction, str) and len(request.transaction) <= 64)


def assert_in_domain(name: str, value) -> None:
    """An independent statement of each command's domain (not the parser's code)."""
    if name in ("play", "pause", "next", "reload_model"):
        assert value is None
    elif name == "policy":
        assert value in POLICIES
    elif name == "volume":
        assert type(value) is int and 0 <= value <= 100
    elif name == "feedback":
        assert value in ("like", "skip")
    elif name == "camera":
        assert type(value) is bool
    elif name == "mood":
        if value is not None:  # None clears the override
            mood, minutes = value  # the daemon unpacks it like this
            assert isinstance(value, MoodOverride) and mood in EMOTIONS
            assert type(minutes) is int and 1 <= minutes <= 1440
    else:
        raise AssertionError(f"no domain for {name}")


# --- box id -----------------------------------------------------------------


def test_box_id_from_config_is_sanitised_for_topics():
    assert derive_box_id("Living Room #2") == "living_room_2"
    assert derive_box_id("kitchen-box") == "kitchen-box"
    assert sanitize_box_id("+/#") == ""


def test_box_id_is_a_stable_short_hash_of_machine_id(tmp_path):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    first = derive_box_id("", machine_id)
    assert re.fullmatch(r"[0-9a-f]{8}", first)
    assert derive_box_id("", machine_id) == first
    assert first not in machine_id.read_text()
    other = tmp_path / "other"
    other.write_text("0123456789abcdef0123456789abcdef\n")
    assert derive_box_id("", other) != first
    assert derive_box_id("  ", machine_id) == first  # nothing usable configured: fall back
    assert re.fullmatch(r"[0-9a-f]{8}", derive_box_id("", tmp_path / "missing"))  # no machine-id: host name


# --- [mqtt] config ----------------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    return caught.value.problems


def test_mqtt_config_keys_and_defaults():
    cfg = parse_config("[mqtt]\nenabled = true\n").mqtt
    for key in ("enabled", "host", "port", "username", "password", "tls_ca", "tls_cert", "tls_key", "tls_insecure",
                "box_id", "base_topic", "discovery_prefix", "keepalive", "protocol", "discovery",
                "max_payload_bytes", "client_id"):
        assert key in MqttConfig.model_fields, key
        assert MqttConfig.model_fields[key].description, key
    assert (cfg.base_topic, cfg.discovery_prefix, cfg.protocol, cfg.discovery) == (
        "moodbox/{box_id}", "homeassistant", "3.1.1", "device")


@pytest.mark.parametrize(("text", "message"), [
    ('base_topic = "moodbox/+"', "'mqtt.base_topic' (line 2) = 'moodbox/+': Value error, must not contain"),
    ('base_topic = "/moodbox"', "no empty level"),
    ('discovery_prefix = "ha/#"', "'mqtt.discovery_prefix' (line 2) = 'ha/#'"),
    ('protocol = "4"', "'mqtt.protocol' (line 2) = '4': Input should be '3.1.1' or '5'"),
    ('discovery = "legacy"', "Input should be 'device', 'per_entity' or 'off'"),
    ('tls_cert = "client.crt"', "tls_cert and tls_key go together"),
    ("max_payload_bytes = 10", "greater than or equal to 64"),
])
def test_mqtt_config_errors_name_the_key(text, message):
    (problem,) = problems(f"[mqtt]\n{text}\n")
    assert message in problem


def test_mqtt_password_from_env_is_secret_and_never_printed(monkeypatch):
    monkeypatch.setenv("MOODBOX_MQTT_PASSWORD", "hunter2-env")
    cfg = parse_config("[mqtt]\nusername = \"box\"\n").mqtt
    assert cfg.password is not None and cfg.password.get_secret_value() == "hunter2-env"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg)
    text = "[mqtt]\npassword = \"hunter2-file\"\ntls_cert = \"c.pem\"\nport = 0\n"
    monkeypatch.delenv("MOODBOX_MQTT_PASSWORD")
    assert all("hunter2" not in p for p in problems(text))


# --- discovery: checked against Home Assistant's schemas --------------------

#: From homeassistant/components/mqtt/schemas.py (DEVICE_DISCOVERY_SCHEMA, MQTT_ORIGIN_INFO_SCHEMA,
#: MQTT_ENTITY_DEVICE_INFO_SCHEMA) and the platforms' PLATFORM_SCHEMA_MODERN (Required keys).
HA_ROOT_KEYS = {"dev", "device", "o", "origin", "cmps", "components", "availability", "availability_mode",
                "availability_template", "availability_topic", "payload_available", "payload_not_available",
                "state_topic", "command_topic", "qos", "encoding", "message_expiry_interval"}
HA_ORIGIN_KEYS = {"name", "sw_version", "support_url"}
HA_DEVICE_KEYS = {"identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
                  "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url"}
HA_COMMON_KEYS = {"name", "unique_id", "default_entity_id", "object_id", "icon", "entity_category",
                  "device_class", "enabled_by_default", "json_attributes_topic", "json_attributes_template",
                  "availability_topic", "payload_available", "payload_not_available", "qos", "encoding",
                  "entity_picture", "state_topic", "value_template", "command_topic", "command_template",
                  "retain", "optimistic"}
HA_PLATFORM_KEYS = {
    "sensor": {"unit_of_measurement", "state_class", "options", "expire_after", "force_update",
               "suggested_display_precision"},
    "binary_sensor": {"payload_on", "payload_off", "expire_after", "off_delay", "force_update"},
    "select": {"options"},
    "switch": {"payload_on", "payload_off", "state_on", "state_off"},
    "number": {"min", "max", "step", "mode", "unit_of_measurement", "payload_reset"},
    "button": {"payload_press"},
}
HA_REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "select": {"command_topic", "options"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
}
ENTITY_ID = re.compile(r"[a-z0-9_]+\.[a-z0-9_]+")
DISCOVERY_ID = re.compile(r"[a-zA-Z0-9_-]+")


def identity(box_id: str = "a1b2c3d4") -> Identity:
    return Identity(box_id=box_id, base=f"moodbox/{box_id}", prefix="homeassistant", version="0.1.0")


def check_component(platform: str, config: dict, ident: Identity) -> None:
    """One entity's config against HA's rules, and against device.topics."""
    assert platform in HA_REQUIRED, platform
    assert set(config) <= HA_COMMON_KEYS | HA_PLATFORM_KEYS[platform], set(config) - HA_COMMON_KEYS
    assert HA_REQUIRED[platform] <= set(config)
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    assert isinstance(config["name"], str) and config["name"]
    if "default_entity_id" in config:
        assert ENTITY_ID.fullmatch(config["default_entity_id"]) and config["default_entity_id"].startswith(
            platform + ".")
    if "object_id" in config:
        assert re.fullmatch(r"[a-z0-9_]+", config["object_id"])
    valid_reads = {topic(ident.base, STATE), topic(ident.base, STATS)}
    for key in ("state_topic", "json_attributes_topic"):
        if key in config:
            assert config[key] in valid_reads, config[key]
    if "command_topic" in config:
        assert command_name(ident.base, config["command_topic"]) in COMMANDS
    if config.get("entity_category") is not None:
        assert config["entity_category"] in ("diagnostic", "config")
    if config.get("device_class") == "enum":
        assert config["options"] and "unit_of_measurement" not in config and "state_class" not in config
    if config.get("device_class") == "temperature":
        assert config["unit_of_measurement"] in ("°C", "°F", "K")
    if platform == "select":
        assert all(isinstance(o, str) for o in config["options"])
    for key, value in config.items():
        if key.endswith("_topic"):
            assert value and not set(value) & {"+", "#", "\0"}, (key, value)


def check_device_block(device: dict, origin: dict) -> None:
    assert set(device) <= HA_DEVICE_KEYS and device["identifiers"] and all(isinstance(i, str) for i in
                                                                              device["identifiers"])
    assert set(origin) <= HA_ORIGIN_KEYS and isinstance(origin["name"], str) and origin["name"]
    if "support_url" in origin:
        assert origin["support_url"].startswith(("http://", "https://"))


def check_device_discovery(topic_name: str, payload: dict, ident: Identity) -> None:
    assert topic_name == f"{ident.prefix}/device/{ident.box_id}/config"
    assert DISCOVERY_ID.fullmatch(ident.box_id)
    assert set(payload) <= HA_ROOT_KEYS, set(payload) - HA_ROOT_KEYS
    check_device_block(payload["dev"], payload["o"])
    assert payload["availability_topic"] == f"{ident.base}/availability"
    assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
    unique_ids = set()
    for component_id, component in payload["cmps"].items():
        assert DISCOVERY_ID.fullmatch(component_id)
        config = dict(component)
        platform = config.pop("p")
        check_component(platform, config, ident)
        unique_ids.add(config["unique_id"])
    assert len(unique_ids) == len(payload["cmps"])


def test_device_discovery_matches_home_assistant_schema():
    ident = identity()
    ((topic_name, raw),) = discovery_messages(ident, "device")
    payload = json.loads(raw)
    check_device_discovery(topic_name, payload, ident)
    platforms = {key: c["p"] for key, c in payload["cmps"].items()}
    assert platforms == {"mood": "sensor", "confidence": "sensor", "face": "binary_sensor",
                         "now_playing": "sensor", "last_error": "sensor", "policy": "select", "camera": "switch",
                         "volume": "number", "play": "button", "pause": "button", "next": "button",
                         "like": "button", "dislike": "button", "fps": "sensor", "cpu_temperature": "sensor",
                         "model_version": "sensor"}
    cmps = payload["cmps"]
    assert cmps["mood"]["options"] == list(MOODS)
    assert cmps["policy"]["options"] == list(POLICIES)
    assert cmps["confidence"]["unit_of_measurement"] == "%"
    assert cmps["mood"]["json_attributes_topic"] == "moodbox/a1b2c3d4/state"
    assert {k for k, c in cmps.items() if c.get("entity_category") == "diagnostic"} >= {"fps", "model_version"}
    assert (cmps["like"]["command_topic"], cmps["like"]["payload_press"]) == ("moodbox/a1b2c3d4/set/feedback", "like")
    assert cmps["camera"]["command_topic"] == "moodbox/a1b2c3d4/set/camera"


def test_per_entity_discovery_matches_home_assistant_schema():
    ident = identity("kitchen-box")
    messages = discovery_messages(ident, "per_entity")
    assert len(messages) == len(ENTITIES)
    for (topic_name, raw), entity in zip(messages, ENTITIES, strict=True):
        payload = json.loads(raw)
        assert topic_name == f"homeassistant/{entity.platform}/kitchen-box/{entity.key}/config"
        check_device_block(payload.pop("dev"), payload.pop("o"))
        check_component(entity.platform, payload, ident)
        assert payload["availability_topic"] == "moodbox/kitchen-box/availability"
        assert payload["object_id"] == f"moodbox_kitchen_box_{entity.key}"
    assert set(all_discovery_topics("homeassistant", "kitchen-box")) == {t for t, _ in messages} | {
        "homeassistant/device/kitchen-box/config"}
    assert discovery_messages(ident, "off") == []


def test_unique_ids_differ_between_boxes():
    def ids(box: str) -> set[str]:
        ((_, raw),) = discovery_messages(identity(box), "device")
        return {c["unique_id"] for c in json.loads(raw)["cmps"].values()}

    assert not ids("box_a") & ids("box_b")


def test_only_this_boxs_discovery_counts_as_ours():
    ((_, device), *_) = discovery_messages(identity("kitchen"), "device")
    (_, entity), *_ = discovery_messages(identity("kitchen"), "per_entity")
    assert is_ours(device.encode(), "kitchen") and is_ours(entity.encode(), "kitchen")
    assert not is_ours(device.encode(), "kitchen2") and not is_ours(entity.encode(), "bedroom")
    foreign = {"name": "Camera", "unique_id": "tasmota_kitchen_camera", "dev": {"identifiers": ["tasmota_ab12"]}}
    for payload in (json.dumps(foreign), "[1]", "{", '{"dev": "x"}', ""):
        assert not is_ours(payload.encode(), "kitchen")
