"""Talking to systemd: sd_notify messages and journal logging.

:class:`Notifier` speaks the sd_notify datagram protocol over
``$NOTIFY_SOCKET`` with a plain socket (no libsystemd needed). The main loop
uses it like this::

    notifier = Notifier.from_environment()   # a no-op outside systemd
    ...model loaded, first frame in...
    notifier.ready()                          # READY=1: `systemctl start` returns
    while running:
        processed = step()
        notifier.watchdog(progress=processed) # WATCHDOG=1 at most every WatchdogSec/2
        notifier.status("mood happy (82%)")   # STATUS=, shown by `systemctl status`
    notifier.stopping()                       # STOPPING=1 on SIGTERM

``watchdog`` pings only when the ping interval has passed *and* progress was
reported since the last ping, so a loop stuck in a call, or spinning without
new frames, stops the pings and systemd restarts the service.

:func:`setup_logging` sends records to the journal with structured fields
when the process runs under systemd, and one line per record to stderr
elsewhere. Pass fields with ``extra``; upper-case names become journal
fields::

    log.info("mood %s", mood, extra={"MOOD": mood})   # journalctl MOOD=happy
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = [
    "SYSLOG_IDENTIFIER",
    "Notifier",
    "running_under_systemd",
    "setup_logging",
]

log = logging.getLogger(__name__)

#: The name journal entries carry (``journalctl -t moodbox``).
SYSLOG_IDENTIFIER = "moodbox"
_STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: journald timestamps each line itself and reads a leading "<N>" as its priority.
_JOURNAL_STREAM_FORMAT = "%(name)s: %(message)s"
#: logging level -> syslog priority, as systemd.journal.JournalHandler maps them.
_PRIORITIES = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2))


def _socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: a path, or '@name' for the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:...", which a box never gets


class Notifier:
    """sd_notify over ``$NOTIFY_SOCKET``; every method is a cheap no-op when it is unset.

    Sending never raises: a failed send is logged once and the daemon goes on,
    because losing a status line must not stop the box.
    """

    def __init__(
        self,
        socket_path: str | None,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = _socket_address(socket_path) if socket_path else None
        if socket_path and self._address is None:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket; systemd notifications are off", socket_path)
        self._clock = clock
        # systemd wants a ping at least every WatchdogSec; half of it leaves room for a slow pass.
        self._interval = watchdog_usec / 2e6 if watchdog_usec and self._address is not None else None
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._last_ping: float | None = None
        self._progress = False
        self._send_failed = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> Notifier:
        """A Notifier for this process from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", raw)
        if pid and pid != str(os.getpid()):
            usec = None  # the watchdog is meant for another process (e.g. our parent)
        return cls(env.get("NOTIFY_SOCKET") or None, usec if usec and usec > 0 else None, clock)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (NOTIFY_SOCKET was set)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (WatchdogSec/2), or None when no watchdog is armed."""
        return self._interval

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` assignments in one datagram; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(message, self._address)
            except OSError as exc:
                if not self._send_failed:
                    log.warning("systemd notification failed (%s); will keep trying quietly", exc)
                self._send_failed = True
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is done (model loaded, camera delivering)."""
        return self.notify("READY=1", *([_status(status)] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=: one human-readable line for ``systemctl status``."""
        return self.notify(_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun, so a slow stop is not mistaken for a hang."""
        return self.notify("STOPPING=1", *([_status(status)] if status else []))

    def watchdog(self, progress: bool = True) -> bool:
        """Call once per loop pass; sends WATCHDOG=1 when due and progress was made since the last ping.

        ``progress`` is whether this pass did useful work (a new frame was
        processed, or the loop is deliberately idle, e.g. camera off for
        privacy). Returns True when a ping was sent.
        """
        if self._interval is None:
            return False
        now = self._clock()
        self._progress = self._progress or progress
        if not self._progress:
            return False
        if self._last_ping is not None and now - self._last_ping < self._interval:
            return False
        if not self.notify("WATCHDOG=1"):
            return False
        self._last_ping = now
        self._progress = False
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _status(text: str) -> str:
    # One assignment per line: a newline inside the text would start a bogus one.
    return "STATUS=" + " ".join(text.split("\n"))


def running_under_systemd(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when systemd started us: $INVOCATION_ID is set, or $JOURNAL_STREAM is our stderr."""
    env = os.environ if environ is None else environ
    if env.get("INVOCATION_ID"):
        return True
    journal_stream = env.get("JOURNAL_STREAM", "")
    if not journal_stream:
        return False
    # JOURNAL_STREAM is inherited by children whose stderr may go elsewhere; trust it only if it is ours.
    try:
        fd = (stream or sys.stderr).fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return False
    return journal_stream == f"{st.st_dev}:{st.st_ino}"


class _SyslogPrefixFormatter(logging.Formatter):
    """'<6>name: message' lines: journald turns the prefix into the entry's PRIORITY."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITIES if record.levelno <= level), 1)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _journal_handler(sender: Callable[..., Any] | None) -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler, send
    except ImportError:
        return None
    return JournalHandler(sender_function=sender or send, SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)


def setup_logging(
    level: str | int = "INFO",
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    journal_sender: Callable[..., Any] | None = None,
) -> str:
    """Point the root logger at the journal (under systemd) or stderr; returns the mode used.

    Modes: ``"journal"`` (systemd-python's JournalHandler: PRIORITY from the
    level, SYSLOG_IDENTIFIER=moodbox, plus any upper-case ``extra`` fields such
    as MOOD), ``"journal-stream"`` (under systemd without systemd-python:
    stderr lines with a ``<N>`` priority prefix that journald understands) and
    ``"stderr"`` (one timestamped line per record). Calling it again replaces
    the handler it installed before. ``journal_sender`` replaces
    ``systemd.journal.send`` (tests capture the fields with it).
    """
    out = stream or sys.stderr
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_moodbox", False)]:
        root.removeHandler(old)
    handler: logging.Handler | None = None
    mode = "stderr"
    under_systemd = running_under_systemd(environ, out)
    if under_systemd:
        handler = _journal_handler(journal_sender)
        mode = "journal"
        if handler is None:
            handler = logging.StreamHandler(out)
            handler.setFormatter(_SyslogPrefixFormatter(_JOURNAL_STREAM_FORMAT))
            mode = "journal-stream"
    if handler is None:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT, "%Y-%m-%d %H:%M:%S"))
    handler._moodbox = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    if mode == "journal-stream":
        log.warning("systemd-python is not installed: logging to stderr without structured fields")
    return mode
