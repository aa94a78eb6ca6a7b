"""``moodbox mqtt``: forget this box on the broker, check the connection, print the topic tables.

``forget`` publishes empty retained payloads on every discovery topic the box
may have used (both discovery modes) and on its retained state, mood and
availability: Home Assistant then removes the device. Stop the daemon first,
or it announces itself again on its next (re)connect.
"""

from __future__ import annotations

import argparse
import sys
import threading
import uuid

from device.config import EX_CONFIG, Config, load_config_or_exit
from device.discovery import all_discovery_topics, entities_markdown, is_ours
from device.outputs.mqtt import AUTH_REASONS, make_client
from device.topics import AVAILABILITY, MOOD, STATE, commands_markdown, sanitize_box_id, topic, topics_markdown
from device.topics import box_id as configured_box_id

__all__ = ["EX_NOPERM", "EX_UNAVAILABLE", "BrokerError", "connect_once", "forget", "probe", "register"]

#: sysexits.h: the broker cannot be reached / refused our credentials.
EX_UNAVAILABLE = 69
EX_NOPERM = 77


class BrokerError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def connect_once(config: Config, box_id: str, timeout: float = 10.0):
    """A connected paho client (network loop running), or BrokerError saying why not.

    Uses its own client id: reusing the daemon's would make the broker drop the daemon.
    """
    cfg = config.mqtt
    client = make_client(cfg, f"moodbox-{box_id}-cli", config.resolve)
    done = threading.Event()
    outcome: dict[str, object] = {}

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        outcome["reason"] = reason_code
        done.set()

    client.on_connect = on_connect
    where = f"{cfg.host}:{cfg.port}"
    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive)
    except OSError as exc:
        raise BrokerError(f"cannot connect to {where}: {exc}", EX_UNAVAILABLE) from None
    client.loop_start()
    if not done.wait(timeout):
        client.loop_stop()
        raise BrokerError(f"no answer from {where} within {timeout:g} s", EX_UNAVAILABLE)
    reason = outcome["reason"]
    if reason.is_failure:  # type: ignore[attr-defined]
        client.disconnect()
        client.loop_stop()
        if reason.value in AUTH_REASONS:  # type: ignore[attr-defined]
            who = f"user {cfg.username!r}" if cfg.username else "anonymous clients"
            raise BrokerError(f"{where} refused {who}: {reason}; check mqtt.username and the password "
                              "(secrets.toml or MOODBOX_MQTT_PASSWORD)", EX_NOPERM)
        raise BrokerError(f"{where} refused the connection: {reason}", EX_UNAVAILABLE)
    return client


def probe(config: Config, timeout: float = 10.0) -> tuple[bool, str]:
    """(ok, one line for people): can this box connect and authenticate? For ``moodbox doctor`` too."""
    try:
        client = connect_once(config, configured_box_id(config), timeout)
    except (BrokerError, ValueError) as exc:
        return False, str(exc)
    client.disconnect()
    client.loop_stop()
    cfg = config.mqtt
    tls = " over TLS" if cfg.tls or cfg.tls_ca or cfg.tls_cert else ""
    who = f" as {cfg.username!r}" if cfg.username else ""
    return True, f"connected to {cfg.host}:{cfg.port}{tls}{who}"


def _retained(client, topics: list[str], marker: str, timeout: float) -> dict[str, bytes]:
    """The retained payloads on ``topics``: subscribe, then wait for a marker published to ourselves,
    which the broker delivers only after the retained messages it sent on subscribe."""
    found: dict[str, bytes] = {}
    token = uuid.uuid4().hex.encode()
    done = threading.Event()

    def on_message(client, userdata, message) -> None:
        if message.topic == marker and message.payload == token:
            done.set()
        elif message.retain and message.payload:
            found[message.topic] = bytes(message.payload)

    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe([(t, 1) for t in (*topics, marker)])
    if not subscribed.wait(timeout):
        raise BrokerError(f"the broker did not confirm the subscription within {timeout:g} s", EX_UNAVAILABLE)
    client.publish(marker, token, qos=1)
    if not done.wait(timeout):
        raise BrokerError(f"the broker did not echo our marker within {timeout:g} s", EX_UNAVAILABLE)
    return found


def forget(config: Config, box_id: str, timeout: float = 10.0) -> list[str]:
    """Clear the retained topics of ``box_id``; returns the topics cleared.

    Discovery topics are cleared only when their payload was written by this box: another device may
    use the same node id in its own per-entity discovery topics.
    """
    cfg = config.mqtt
    base = cfg.base_topic.replace("{box_id}", box_id)
    own = [topic(base, t) for t in (STATE, MOOD, AVAILABILITY)]
    candidates = all_discovery_topics(cfg.discovery_prefix, box_id)
    client = connect_once(config, box_id, timeout)
    try:
        found = _retained(client, candidates + own, f"{base}/forget/{uuid.uuid4().hex}", timeout)
        topics = [t for t in candidates if t in found and is_ours(found[t], box_id)] + [t for t in own if t in found]
        sent = [client.publish(t, b"", qos=1, retain=True) for t in topics]
        for info in sent:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise BrokerError(f"the broker did not confirm clearing within {timeout:g} s", EX_UNAVAILABLE)
    finally:
        client.disconnect()
        client.loop_stop()
    return topics


def _forget_command(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    this_box = sanitize_box_id(args.box_id) if args.box_id else configured_box_id(config)
    try:
        cleared = forget(config, this_box, args.timeout)
    except (BrokerError, ValueError) as exc:
        print(f"moodbox mqtt forget: {exc}", file=sys.stderr)
        return getattr(exc, "code", EX_CONFIG)
    print(f"box {this_box}: cleared {len(cleared)} retained topics on {config.mqtt.host}:{config.mqtt.port}")
    for name in cleared:
        print(f"  {name}")
    return 0


def _check_command(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    if not config.mqtt.enabled and not args.force:
        print("MQTT is disabled ([mqtt] enabled = false); nothing to check (--force checks anyway)")
        return 0
    ok, line = probe(config, args.timeout)
    print(f"{'✔' if ok else '✖'} MQTT {line}")
    return 0 if ok else 1


def _topics_command(args: argparse.Namespace) -> int:
    print("## Topics\n")
    print(topics_markdown())
    print("\n## Commands\n")
    print(commands_markdown())
    print("\n## Home Assistant entities\n")
    print(entities_markdown())
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("mqtt", help="MQTT and Home Assistant: forget, check, topics")
    actions = parser.add_subparsers(dest="mqtt_action", required=True, metavar="ACTION")

    forget_parser = actions.add_parser(
        "forget", help="remove this box from Home Assistant: clear its retained discovery, state, mood and "
        "availability (stop the daemon first)")
    forget_parser.add_argument("--config", help="config file (default /etc/moodbox/config.toml)")
    forget_parser.add_argument("--box-id", help="forget another box (default: this one's id)")
    forget_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")
    forget_parser.set_defaults(func=_forget_command)

    check_parser = actions.add_parser("check", help="connect and authenticate once, then say how it went")
    check_parser.add_argument("--config", help="config file (default /etc/moodbox/config.toml)")
    check_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")
    check_parser.add_argument("--force", action="store_true", help="check even when [mqtt] enabled = false")
    check_parser.set_defaults(func=_check_command)

    topics_parser = actions.add_parser("topics", help="print the topic, command and entity tables (markdown)")
    topics_parser.set_defaults(func=_topics_command)
