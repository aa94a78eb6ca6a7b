"""Opening the OLED: SSD1306 or SH1106 over I2C, luma's dummy device, or PNG frames from luma.emulator.

luma libraries are imported inside the functions, so a box without them (or
without pygame, for the emulator) loses only its display.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.config import DisplayConfig
from device.display.screens import HEIGHT, WIDTH

__all__ = ["DEVICE_ERRORS", "FRAME_TEMPLATE", "I2CPanel", "opener", "probe", "require"]

log = logging.getLogger(__name__)

#: PNG frames the emulator writes, numbered from 1 in each run.
FRAME_TEMPLATE = "oled_{0:06}.png"


def _device_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the display is not answering", not a bug.

    luma turns errno 121 (EREMOTEIO) and EIO during commands into
    DeviceNotFoundError, but lets the same errors through raw from display().
    """
    try:
        from luma.core.error import Error
    except ImportError:
        return (OSError,)
    return (OSError, Error)


DEVICE_ERRORS = _device_errors()


def probe(port: int, address: int, bus: Any = None) -> None:
    """Raise OSError unless a chip acknowledges ``address`` on /dev/i2c-``port`` (what i2cdetect does).

    Cheap and side-effect free, so a missing display is noticed without
    building a luma driver for it. ``bus``: an open smbus2.SMBus-like object to use instead.
    """
    if bus is not None:
        bus.write_quick(address)
        return
    import smbus2

    with smbus2.SMBus(port) as smbus:
        smbus.write_quick(address)


class I2CPanel:
    """Opens an SSD1306/SH1106 and, after an I2C error, initialises the same one again.

    The I2C handle and the luma driver object are kept across retries: luma
    has no public re-initialise call, and a new driver per retry would leave
    its exit hook and ~300 KB of lookup tables behind each time, for months.
    ``bus`` (an smbus2.SMBus-like object) replaces /dev/i2c-N, for tests.
    """

    def __init__(self, config: DisplayConfig, bus: Any = None) -> None:
        self._config = config
        self._bus = bus
        self._serial: Any = None
        self.driver: Any = None

    def __call__(self) -> Any:
        from luma.core.interface.serial import i2c
        from luma.oled.device import sh1106, ssd1306

        cfg = self._config
        driver_class = {"ssd1306": ssd1306, "sh1106": sh1106}[cfg.driver]
        probe(cfg.i2c_port, cfg.address, self._bus)
        if self._serial is None:
            self._serial = i2c(bus=self._bus, port=cfg.i2c_port, address=cfg.address)
        if self.driver is None:
            self.driver = driver_class(self._serial, width=WIDTH, height=HEIGHT, rotate=cfg.rotation)
        else:
            # Re-sends the init sequence: the panel may have lost power.
            driver_class.__init__(self.driver, self._serial, width=WIDTH, height=HEIGHT, rotate=cfg.rotation)
        self.driver.contrast(cfg.contrast)
        return self.driver


def require(config: DisplayConfig) -> None:
    """Import what ``config.driver`` needs now, so a missing library is reported at start-up."""
    if config.driver in ("ssd1306", "sh1106"):
        import luma.oled.device  # noqa: F401
        import smbus2  # noqa: F401
    elif config.driver == "emulator":
        # pygame greets on import; keep the journal free of it.
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import luma.emulator.device  # noqa: F401
        import pygame  # noqa: F401
    else:
        import luma.core.device  # noqa: F401


def opener(config: DisplayConfig, emulator_dir: Path) -> Callable[[], Any]:
    """A function that (re)initialises the configured display and returns the luma device, ready to draw."""
    if config.driver in ("ssd1306", "sh1106"):
        return I2CPanel(config)
    if config.driver == "dummy":

        def dummy() -> Any:
            from luma.core.device import dummy as luma_dummy

            return luma_dummy(width=WIDTH, height=HEIGHT, rotate=config.rotation, mode="1")

        return dummy

    capture: list[Any] = []  # one emulator per output: its frame count runs on across retries

    def emulator() -> Any:
        if not capture:
            from luma.emulator.device import capture as luma_capture

            emulator_dir.mkdir(parents=True, exist_ok=True)
            capture.append(luma_capture(width=WIDTH, height=HEIGHT, rotate=config.rotation, mode="1",
                                        transform="scale2x", scale=2,
                                        file_template=str(emulator_dir / FRAME_TEMPLATE)))
            log.info("display emulator: PNG frames go to %s", emulator_dir)
        return capture[0]

    return emulator
