"""The event bus: each output gets its own thread and bounded queue.

A slow or failing output (a Spotify call waiting on the network, an I2C bus
that times out) can never stall the camera loop: ``publish`` never blocks, a
full queue drops that output's oldest event, and an exception in a handler is
logged and the output keeps running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Bus", "Output"]

log = logging.getLogger(__name__)


@runtime_checkable
class Output(Protocol):
    """Something that reacts to events: display, music, MQTT, log.

    ``name`` matches its config section. ``commands`` lists the Command names
    it owns and answers with a CommandResult.
    """

    name: str
    commands: frozenset[str]

    def start(self, bus: Bus) -> None: ...

    def handle(self, event: object) -> None: ...

    def stop(self) -> None: ...


class _Subscriber:
    def __init__(self, output: Output, size: int) -> None:
        self.output = output
        self.queue: queue.Queue[object] = queue.Queue(maxsize=size)
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"out-{output.name}", daemon=True)

    def offer(self, event: object) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    continue
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("output %s is behind: %d events dropped", self.output.name, self.dropped)

    def _run(self) -> None:
        while True:
            event = self.queue.get()
            if event is _STOP:
                return
            try:
                self.output.handle(event)
            except Exception:  # an output's bug must not take the box down
                log.exception("output %s failed on %s", self.output.name, type(event).__name__)


_STOP = object()


class Bus:
    """Fan-out of events to outputs, plus in-process listeners called inline.

    Listeners (``listen``) run on the publisher's thread and must be quick:
    the daemon uses one to take Commands into its own queue.
    """

    def __init__(self, queue_size: int = 64) -> None:
        self._queue_size = queue_size
        self._subscribers: list[_Subscriber] = []
        self._listeners: list = []
        self._lock = threading.Lock()

    def listen(self, callback) -> None:
        self._listeners.append(callback)

    def attach(self, output: Output) -> None:
        """Start ``output`` and deliver events to it on its own thread."""
        subscriber = _Subscriber(output, self._queue_size)
        output.start(self)
        subscriber.thread.start()
        with self._lock:
            self._subscribers.append(subscriber)

    def publish(self, event: object) -> None:
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("listener failed on %s", type(event).__name__)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def stop(self, timeout: float = 1.5) -> None:
        """Drain and stop outputs in reverse start order, all within ``timeout`` seconds."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        deadline = time.monotonic() + timeout
        for subscriber in subscribers:
            subscriber.offer(_STOP)
        for subscriber in reversed(subscribers):
            subscriber.thread.join(max(0.0, deadline - time.monotonic()))
            if subscriber.thread.is_alive():
                log.warning("output %s did not drain in %.1f s", subscriber.output.name, timeout)
            try:
                subscriber.output.stop()
            except Exception:
                log.exception("output %s failed to stop", subscriber.output.name)
