"""The OLED: screens drawn as pure functions of small view models, and the luma devices they go to.

The output that feeds it from the bus is :mod:`device.outputs.display`.
"""

from device.display.screens import (
    BootStep,
    BootView,
    MessageView,
    MoodView,
    NowPlayingView,
    PrivacyView,
    StatusIcons,
    View,
    render,
)
from device.display.state import DisplayState, apply, choose_view

__all__ = [
    "BootStep",
    "BootView",
    "DisplayState",
    "MessageView",
    "MoodView",
    "NowPlayingView",
    "PrivacyView",
    "StatusIcons",
    "View",
    "apply",
    "choose_view",
    "render",
]
