"""A real mosquitto broker for tests, on a free loopback port.

``Broker`` writes a generated mosquitto.conf (optionally a password file and a
TLS listener with certificates made by ``make_certs``), starts
``/usr/sbin/mosquitto`` and stops it by its PID. It can be restarted on the
same ports, which is how tests pull the broker out from under a running
client. Persistence is off, so a restart also forgets every retained message:
whatever comes back after one was re-published by the client.

Any suite can use it::

    from broker import Broker  # tests/ is on sys.path under pytest
    with Broker(tmp_path) as broker:
        ... connect to broker.host, broker.port ...
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["MOSQUITTO", "Broker", "Certs", "Message", "Observer", "free_port", "make_certs", "wait_for"]

MOSQUITTO = os.environ.get("MOODBOX_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: Signed by a different CA: the broker must refuse it.
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(folder: Path, name: str, subject: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)


def _self_signed_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)


def _sign(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


def make_certs(folder: Path) -> Certs:
    """A test CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a rogue one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found: it generates the test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    _self_signed_ca(folder, "ca")
    _self_signed_ca(folder, "rogue-ca")
    _key_and_csr(folder, "server", "/CN=localhost")
    _sign(folder, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _key_and_csr(folder, "client", "/CN=moodbox-test")
    _sign(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _key_and_csr(folder, "rogue", "/CN=rogue")
    _sign(folder, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return Certs(
        ca=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        rogue_cert=folder / "rogue.crt",
        rogue_key=folder / "rogue.key",
    )


class Broker:
    """One mosquitto process; ``users`` turns on a password file, ``certs`` adds a TLS listener."""

    host = "127.0.0.1"

    def __init__(self, folder: Path, users: dict[str, str] | None = None, certs: Certs | None = None) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip(f"mosquitto not found at {MOSQUITTO}: apt-get install mosquitto (or set MOODBOX_MOSQUITTO)")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.certs = certs
        self.port = free_port()
        self.tls_port = free_port() if certs else None
        self.log = folder / "mosquitto.log"
        self.conf = folder / "mosquitto.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            # Running as root, mosquitto would switch to user "mosquitto" and lose access to these files.
            f"user {getpass.getuser()}",
            "persistence false",
            f"log_dest file {self.log}",
            "log_type all",
            "per_listener_settings false",
            # Without it the broker's Nagle delay meets the clients' delayed ACKs: ~40 ms per hop.
            "set_tcp_nodelay true",
            f"listener {self.port} {self.host}",
        ]
        if self.users is not None:
            passwd = self.folder / "passwd"
            passwd.write_text("")
            if not Path(MOSQUITTO_PASSWD).exists():
                pytest.skip("mosquitto_passwd not found: it hashes the test password file")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True,
                               capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.certs:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.certs.ca}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                "require_certificate true",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        deadline = time.monotonic() + 10
        while not all(self._accepts(p) for p in ports):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}\n{log[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {ports} within 10 s")
            time.sleep(0.02)
        return self

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.2):
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """A second, independent paho client that records every message it sees.

    ``sync()`` is a barrier: it publishes a marker to itself and waits for it,
    so everything the broker sent before has arrived. Right after connecting,
    the messages recorded before the first ``sync()`` are the retained ones.
    """

    def __init__(self, broker: Broker, topics: tuple[str, ...] = ("#",), username: str | None = None,
                 password: str | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from device.outputs.mqtt import no_delay

        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._marker = f"observer/{uuid.uuid4().hex}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{uuid.uuid4().hex[:8]}")
        if username:
            self._client.username_pw_set(username, password)
        self._client.on_message = self._record
        self._client.on_socket_open = no_delay
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.connect(broker.host, broker.port, keepalive=30)
        self._client.loop_start()
        self._client.subscribe([(t, 1) for t in (*topics, self._marker)])
        if not subscribed.wait(10):
            raise AssertionError("observer: no SUBACK from the broker within 10 s")

    def _record(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append(Message(message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def mark(self) -> int:
        """An index: pass it as ``after`` to wait only for messages from now on."""
        with self._cond:
            return len(self.messages)

    def wait(self, topic: str, predicate: Callable[[Message], bool] = lambda m: True, after: int = 0,
             timeout: float = 10.0) -> Message:
        """The first message on ``topic`` (at index >= ``after``) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages[after:]:
                    if message.topic == topic and predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [m.text[:120] for m in self.messages[after:] if m.topic == topic]
                    raise AssertionError(f"timed out after {timeout:.0f} s waiting for a message on {topic}; "
                                         f"seen there: {seen[-5:]}")
                self._cond.wait(remaining)

    def on(self, topic: str, after: int = 0) -> list[Message]:
        with self._cond:
            return [m for m in self.messages[after:] if m.topic == topic]

    def count(self, topic: str, after: int = 0) -> int:
        return len(self.on(topic, after))

    def sync(self, timeout: float = 10.0) -> None:
        token = uuid.uuid4().hex.encode()
        after = self.mark()
        self._client.publish(self._marker, token, qos=1)
        self.wait(self._marker, lambda m: m.payload == token, after=after, timeout=timeout)

    def retained(self) -> dict[str, Message]:
        """Retained messages delivered on subscribe (call right after creating the observer)."""
        self.sync()
        with self._cond:
            return {m.topic: m for m in self.messages if m.retain and m.topic != self._marker}

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, wait: bool = True):
        """Publish; with ``wait`` until the broker has it (QoS 1 PUBACK). Returns paho's MQTTMessageInfo."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(10)
        return info

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
