"""Home Assistant MQTT discovery payloads, generated from ``device.topics``.

Two modes:

* ``device`` (Home Assistant 2024.11+): one retained message on
  ``<prefix>/device/<box_id>/config`` holding the shared ``dev`` (device),
  ``o`` (origin) and availability blocks and a ``cmps`` map of components,
  each with its ``p`` (platform). Entities carry ``default_entity_id``
  (HA 2025.10+; older versions derive the id from device and entity names).
* ``per_entity``, for older Home Assistant: one retained message per entity on
  ``<prefix>/<platform>/<box_id>/<key>/config``, each repeating the device,
  origin and availability, with ``object_id`` (which those versions know).

Home Assistant documents ``dev``, ``o``, ``cmps`` and ``p`` by these
abbreviations in its device-discovery example; every other key is written
in full. Origin ``name`` is required: HA drops a message whose origin is invalid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from device.topics import (
    AVAILABILITY,
    COMMANDS,
    MOODS,
    OFFLINE,
    ONLINE,
    POLICIES,
    STATE,
    STATS,
    Topic,
    command_topic,
    topic,
)

__all__ = [
    "ENTITIES",
    "Entity",
    "Identity",
    "all_discovery_topics",
    "device_topic",
    "discovery_messages",
    "entities_markdown",
    "entity_topic",
    "is_ours",
    "object_id",
    "origin",
    "unique_id",
]

ORIGIN_NAME = "moodbox"
MANUFACTURER = "Moodbox"
MODEL = "Moodbox emotion-aware music box"


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: where it reads (``source``) and which command it sends."""

    key: str
    platform: str
    name: str
    source: Topic | None = None
    value_template: str = ""
    command: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # platform-specific discovery keys
    attributes_template: str = ""  # json_attributes from the same source topic
    diagnostic: bool = False
    expires: bool = False  # goes unknown when <base>/stats stops arriving


ENTITIES: tuple[Entity, ...] = (
    Entity("mood", "sensor", "Mood", STATE, "{{ value_json.mood }}",
           options={"device_class": "enum", "options": list(MOODS), "icon": "mdi:emoticon-outline"},
           attributes_template="{{ value_json.probabilities | tojson }}"),
    Entity("confidence", "sensor", "Mood confidence", STATE,
           "{{ none if value_json.confidence is none else (value_json.confidence * 100) | round(1) }}",
           options={"unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:gauge"}),
    Entity("face", "binary_sensor", "Face present", STATE, "{{ 'ON' if value_json.face else 'OFF' }}",
           options={"device_class": "occupancy", "payload_on": "ON", "payload_off": "OFF"}),
    Entity("now_playing", "sensor", "Now playing", STATE,
           "{{ (value_json.playing.track or 'unknown')[:255] if value_json.playing else 'idle' }}",
           options={"icon": "mdi:music"}, attributes_template="{{ (value_json.playing or {}) | tojson }}"),
    Entity("last_error", "sensor", "Last error", STATE,
           "{{ value_json.last_error.text[:255] if value_json.last_error else 'none' }}",
           options={"icon": "mdi:alert-circle-outline"},
           attributes_template="{{ (value_json.last_error or {}) | tojson }}", diagnostic=True),
    # The music engine may report "user" (a playlist the user chose): not an option, so shown as unknown.
    Entity("policy", "select", "Music policy", STATE,
           f"{{{{ value_json.policy if value_json.policy in {list(POLICIES)} else none }}}}", command="policy",
           options={"options": list(POLICIES), "icon": "mdi:playlist-music"}),
    Entity("camera", "switch", "Camera", STATE, "{{ value_json.camera }}", command="camera",
           options={"payload_on": "on", "payload_off": "off", "state_on": "on", "state_off": "off",
                    "icon": "mdi:cctv"}),
    Entity("volume", "number", "Volume", STATE, "{{ value_json.volume }}", command="volume",
           options={"min": 0, "max": 100, "step": 1, "mode": "slider", "unit_of_measurement": "%",
                    "icon": "mdi:volume-high"}),
    Entity("play", "button", "Play", command="play", options={"payload_press": "PRESS", "icon": "mdi:play"}),
    Entity("pause", "button", "Pause", command="pause", options={"payload_press": "PRESS", "icon": "mdi:pause"}),
    Entity("next", "button", "Next track", command="next",
           options={"payload_press": "PRESS", "icon": "mdi:skip-next"}),
    Entity("like", "button", "Like track", command="feedback",
           options={"payload_press": "like", "icon": "mdi:thumb-up"}),
    Entity("dislike", "button", "Dislike track", command="feedback",
           options={"payload_press": "dislike", "icon": "mdi:thumb-down"}),
    Entity("fps", "sensor", "Frame rate", STATS, "{{ value_json.fps }}",
           options={"unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:camera-timer"},
           diagnostic=True, expires=True),
    Entity("cpu_temperature", "sensor", "CPU temperature", STATS, "{{ value_json.cpu_temp_c }}",
           options={"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement"},
           diagnostic=True, expires=True),
    Entity("model_version", "sensor", "Model version", STATE,
           "{{ value_json.model.version if value_json.model else none }}",
           options={"icon": "mdi:brain"}, attributes_template="{{ (value_json.model or {}) | tojson }}",
           diagnostic=True),
)


@dataclass(frozen=True)
class Identity:
    """Who this box is on the broker."""

    box_id: str
    base: str  # base topic, {box_id} already filled in
    prefix: str  # Home Assistant discovery prefix
    version: str
    stats_interval_s: float = 60.0


def _support_url() -> str | None:
    """The project's URL from the installed package metadata, if it declares one."""
    try:
        urls = metadata.metadata("moodbox").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    found = dict(entry.split(",", 1) for entry in urls if "," in entry)
    for label in ("Issues", "Documentation", "Homepage", "Source"):
        if label in found and found[label].strip().startswith(("http://", "https://")):
            return found[label].strip()
    return None


def origin(version: str) -> dict[str, str]:
    block = {"name": ORIGIN_NAME, "sw_version": version}
    url = _support_url()
    if url:
        block["support_url"] = url
    return block


def _device(identity: Identity) -> dict[str, Any]:
    return {"identifiers": [f"moodbox_{identity.box_id}"], "name": f"Moodbox {identity.box_id}",
            "manufacturer": MANUFACTURER, "model": MODEL, "sw_version": identity.version}


def _availability(identity: Identity) -> dict[str, str]:
    return {"availability_topic": topic(identity.base, AVAILABILITY),
            "payload_available": ONLINE, "payload_not_available": OFFLINE}


def unique_id(identity: Identity, entity: Entity) -> str:
    return f"moodbox_{identity.box_id}_{entity.key}"


def object_id(identity: Identity, entity: Entity) -> str:
    """The entity id's part after the platform: HA allows only a-z, 0-9 and _ there."""
    return f"moodbox_{identity.box_id.replace('-', '_')}_{entity.key}"


def _component(identity: Identity, entity: Entity) -> dict[str, Any]:
    config: dict[str, Any] = {"name": entity.name, "unique_id": unique_id(identity, entity)}
    if entity.source is not None:
        config["state_topic"] = topic(identity.base, entity.source)
        config["value_template"] = entity.value_template
        if entity.attributes_template:
            config["json_attributes_topic"] = config["state_topic"]
            config["json_attributes_template"] = entity.attributes_template
    if entity.command is not None:
        config["command_topic"] = command_topic(identity.base, COMMANDS[entity.command].name)
    if entity.diagnostic:
        config["entity_category"] = "diagnostic"
    if entity.expires:
        config["expire_after"] = int(3 * identity.stats_interval_s)
    config.update(entity.options)
    return config


def device_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/device/{box_id}/config"


def entity_topic(prefix: str, box_id: str, entity: Entity) -> str:
    return f"{prefix}/{entity.platform}/{box_id}/{entity.key}/config"


def discovery_messages(identity: Identity, mode: str) -> list[tuple[str, str]]:
    """(topic, JSON payload) pairs to publish retained, for ``mode`` "device", "per_entity" or "off"."""
    if mode == "off":
        return []
    if mode == "device":
        components = {}
        for entity in ENTITIES:
            component = {"p": entity.platform, **_component(identity, entity)}
            component["default_entity_id"] = f"{entity.platform}.{object_id(identity, entity)}"
            components[entity.key] = component
        payload = {"dev": _device(identity), "o": origin(identity.version), **_availability(identity),
                   "cmps": components}
        return [(device_topic(identity.prefix, identity.box_id), json.dumps(payload, ensure_ascii=False))]
    if mode == "per_entity":
        messages = []
        for entity in ENTITIES:
            payload = {**_component(identity, entity), "object_id": object_id(identity, entity),
                       "dev": _device(identity), "o": origin(identity.version), **_availability(identity)}
            messages.append((entity_topic(identity.prefix, identity.box_id, entity),
                             json.dumps(payload, ensure_ascii=False)))
        return messages
    raise ValueError(f"unknown discovery mode {mode!r}")


def all_discovery_topics(prefix: str, box_id: str) -> list[str]:
    """Every discovery topic this box may have used, in either mode: what ``forget`` clears."""
    return [device_topic(prefix, box_id)] + [entity_topic(prefix, box_id, e) for e in ENTITIES]


def is_ours(payload: bytes, box_id: str) -> bool:
    """Whether a retained discovery payload was written by this box (not another device that happens
    to use the same node id): only those may be cleared."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    if not isinstance(document, dict):
        return False
    device = document.get("dev") or document.get("device")
    identifiers = (device.get("identifiers") or device.get("ids") or []) if isinstance(device, dict) else []
    if isinstance(identifiers, str):  # HA accepts a single identifier as a string
        identifiers = [identifiers]
    unique = document.get("unique_id") or document.get("uniq_id") or ""
    return f"moodbox_{box_id}" in identifiers and (
        "cmps" in document or "components" in document or str(unique).startswith(f"moodbox_{box_id}_"))


def entities_markdown(box_id: str = "<box_id>") -> str:
    rows = ["| entity | platform | reads | sends | category |", "| --- | --- | --- | --- | --- |"]
    for e in ENTITIES:
        template = e.value_template.replace("|", "\\|")  # a bare | would split the table cell
        reads = f"`{e.source.suffix}` `{template}`" if e.source else ""
        sends = ""
        if e.command:
            press = e.options.get("payload_press")
            sends = f"`set/{e.command}`" + (f" `{press}`" if press and press != "PRESS" else "")
        rows.append(f"| {e.name} (`{e.platform}.moodbox_{box_id}_{e.key}`) | {e.platform} | {reads} | {sends} | "
                    f"{'diagnostic' if e.diagnostic else ''} |")
    return "\n".join(rows)
