"""Every OLED screen as a pure function: a small frozen view model in, a 1-bit 128x64 image out.

Nothing here knows about events, clocks or devices, so each screen can be
checked against a golden PNG and pictured in the README. Layouts keep a 2 px
margin on the right and bottom, which the burn-in shift moves into.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from device.display.glyphs import FACE_SIZE, ICON_SIZE, IconState, draw_face, draw_icon, fonts
from device.events import NO_FACE

__all__ = [
    "HEIGHT",
    "SCROLL_GAP",
    "WIDTH",
    "BootStep",
    "BootView",
    "MessageView",
    "MoodView",
    "NowPlayingView",
    "PrivacyView",
    "StatusIcons",
    "View",
    "mood_label",
    "render",
    "scrolls",
    "text_width",
]

WIDTH, HEIGHT = 128, 64
#: Usable width: the burn-in shift may move the picture 1 px right.
_RIGHT = WIDTH - 2
#: Blank pixels between the end of a scrolling text and its next lap.
SCROLL_GAP = 24
_BODY_TOP = 14
_TRACK_X = ICON_SIZE + 3

_StepState = str  # "done", "active", "waiting" or "failed"


@dataclass(frozen=True)
class StatusIcons:
    """The icon row on top of every screen; "hidden" leaves the slot empty."""

    camera: IconState = "hidden"
    network: IconState = "hidden"
    mqtt: IconState = "hidden"
    spotify: IconState = "hidden"


@dataclass(frozen=True)
class MoodView:
    mood: str  # an EMOTIONS name or NO_FACE
    confidence: float  # 0..1
    override: bool = False
    status: StatusIcons = StatusIcons()
    clock: str = ""


@dataclass(frozen=True)
class NowPlayingView:
    title: str
    artist: str
    playlist: str = ""
    policy: str = ""  # the music policy and its target, e.g. "uplift · calm"
    playing: bool = True
    scroll: int = 0  # pixels the title and artist have moved left; wraps around
    status: StatusIcons = StatusIcons()
    clock: str = ""


@dataclass(frozen=True)
class MessageView:
    """Setup and error screens: what is wrong and what to do about it."""

    title: str
    hint: str
    status: StatusIcons = StatusIcons()
    clock: str = ""


@dataclass(frozen=True)
class PrivacyView:
    status: StatusIcons = StatusIcons()
    clock: str = ""


@dataclass(frozen=True)
class BootStep:
    name: str
    state: _StepState


@dataclass(frozen=True)
class BootView:
    steps: tuple[BootStep, ...] = field(default_factory=tuple)
    version: str = ""
    status: StatusIcons = StatusIcons()
    clock: str = ""


View = MoodView | NowPlayingView | MessageView | PrivacyView | BootView


def mood_label(mood: str) -> str:
    return "No face" if mood == NO_FACE else mood.replace("_", " ").capitalize()


# --- drawing helpers ---------------------------------------------------------


def _text(draw: ImageDraw.ImageDraw, x: int, baseline: int, text: str, font: ImageFont.FreeTypeFont) -> None:
    draw.text((x, baseline), text, font=font, fill=1, anchor="ls")


def text_width(text: str, font: ImageFont.FreeTypeFont) -> float:
    # Measured as drawn on a 1-bit image: monochrome hinting makes text up to 15% wider.
    return font.getlength(text, mode="1")


def _fit(text: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    """``text`` cut with an ellipsis so it fits ``width`` pixels."""
    if text_width(text, font) <= width:
        return text
    while text and text_width(text + "…", font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap; a newline in ``text`` always starts a new line (keeps commands whole)."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, font) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return [_fit(line, font, width) for line in lines]


def _marquee(image: Image.Image, text: str, font: ImageFont.FreeTypeFont, box: tuple[int, int, int],
             scroll: int) -> None:
    """Draw ``text`` from ``x0`` to ``x1`` on ``baseline``; too long, it runs past and wraps round."""
    x0, x1, baseline = box
    width = x1 - x0
    length = int(text_width(text, font))
    if length <= width:
        _text(ImageDraw.Draw(image), x0, baseline, text, font)
        return
    ascent, descent = font.getmetrics()
    strip = Image.new("1", (width, ascent + descent))
    draw = ImageDraw.Draw(strip)
    lap = length + SCROLL_GAP
    offset = scroll % lap
    for start in (-offset, lap - offset):
        draw.text((start, ascent), text, font=font, fill=1, anchor="ls")
    image.paste(strip, (x0, baseline - ascent), mask=strip)  # lit pixels only: lines may touch


def _status_row(image: Image.Image, status: StatusIcons, clock: str) -> None:
    draw = ImageDraw.Draw(image)
    if clock:
        _text(draw, 0, 10, clock, fonts().small)
    slots = (("camera", status.camera), ("network", status.network), ("mqtt", status.mqtt),
             ("spotify", status.spotify))
    for i, (name, state) in enumerate(reversed(slots)):
        draw_icon(image, name, (_RIGHT - ICON_SIZE - i * (ICON_SIZE + 2), 0), state)
    # Dotted, so no pixel stays lit all day right under the icons.
    draw.point([(x, 12) for x in range(0, _RIGHT, 2)], fill=1)


def _bar(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], fraction: float) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=1)
    inner = round((x1 - x0 - 3) * min(max(fraction, 0.0), 1.0))
    if inner > 0:
        draw.rectangle((x0 + 2, y0 + 2, x0 + 1 + inner, y1 - 2), fill=1)


# --- screens -------------------------------------------------------------------


def _mood(image: Image.Image, view: MoodView) -> None:
    draw = ImageDraw.Draw(image)
    f = fonts()
    draw_face(image, view.mood, (2, _BODY_TOP + 3))
    x = FACE_SIZE + 8
    _text(draw, x, 32, mood_label(view.mood), f.large)
    if view.mood == NO_FACE:
        _text(draw, x, 46, "nobody in view", f.small)
        return
    confidence = min(max(view.confidence, 0.0), 1.0) if math.isfinite(view.confidence) else 0.0
    _bar(draw, (x, 37, _RIGHT - 1, 45), confidence)
    note = "set by hand" if view.override else f"{round(confidence * 100)}% sure"
    _text(draw, x, 58, note, f.small)


def _now_playing(image: Image.Image, view: NowPlayingView) -> None:
    draw = ImageDraw.Draw(image)
    f = fonts()
    draw_icon(image, "music", (0, _BODY_TOP + 2))
    _marquee(image, view.title, f.medium, (_TRACK_X, _RIGHT, 26), view.scroll)
    _marquee(image, view.artist, f.small, (_TRACK_X, _RIGHT, 38), view.scroll)
    if view.playlist:
        draw_icon(image, "playlist", (0, 41))
        _text(draw, _TRACK_X, 50, _fit(view.playlist, f.small, _RIGHT - _TRACK_X), f.small)
    line = view.policy or ("playing" if view.playing else "paused")
    _text(draw, _TRACK_X, 61, _fit(line, f.small, _RIGHT - _TRACK_X), f.small)
    # Play triangle or pause bars, left of the policy line.
    if view.playing:
        draw.polygon([(2, 53), (2, 60), (7, 56)], fill=1)
    else:
        draw.rectangle((2, 53, 3, 60), fill=1)
        draw.rectangle((6, 53, 7, 60), fill=1)


def _message(image: Image.Image, view: MessageView) -> None:
    draw = ImageDraw.Draw(image)
    f = fonts()
    # No icon here: the title needs the full width, and the status row above
    # already shows the failing part inverted.
    _text(draw, 0, 26, _fit(view.title, f.medium, _RIGHT), f.medium)
    for i, line in enumerate(_wrap(view.hint, f.small, _RIGHT)[:3]):
        _text(draw, 0, 39 + 11 * i, line, f.small)


def _privacy(image: Image.Image, view: PrivacyView) -> None:
    draw = ImageDraw.Draw(image)
    f = fonts()
    draw_icon(image, "camera", (2, _BODY_TOP + 4), "off", scale=2)
    _text(draw, 30, 27, "Camera off", f.medium)
    _text(draw, 30, 39, "Privacy mode", f.small)
    _text(draw, 0, 55, "Nothing is seen or kept.", f.small)


def _boot(image: Image.Image, view: BootView) -> None:
    draw = ImageDraw.Draw(image)
    f = fonts()
    _text(draw, 0, 26, "Starting", f.medium)
    if view.version:
        _text(draw, _RIGHT - int(text_width(view.version, f.small)), 26, view.version, f.small)
    for i, step in enumerate(view.steps[:4]):
        x, baseline = (i % 2) * 64, 39 + (i // 2) * 11
        box = (x, baseline - 8, x + 7, baseline - 1)
        draw.rectangle(box, outline=1)
        if step.state == "done":
            draw.line([(x + 2, baseline - 5), (x + 3, baseline - 3), (x + 6, baseline - 8)], fill=1, width=1)
        elif step.state == "failed":
            draw.line((x + 1, baseline - 7, x + 6, baseline - 2), fill=1)
            draw.line((x + 1, baseline - 2, x + 6, baseline - 7), fill=1)
        elif step.state == "active":
            draw.rectangle((x + 3, baseline - 5, x + 4, baseline - 4), fill=1)
        _text(draw, x + 10, baseline, _fit(step.name, f.small, 52), f.small)
    done = sum(step.state == "done" for step in view.steps)
    _bar(draw, (0, 53, _RIGHT - 1, 60), done / len(view.steps) if view.steps else 0.0)


_SCREENS = {
    MoodView: _mood,
    NowPlayingView: _now_playing,
    MessageView: _message,
    PrivacyView: _privacy,
    BootView: _boot,
}


def render(view: View) -> Image.Image:
    """The 128x64 1-bit picture of ``view``."""
    image = Image.new("1", (WIDTH, HEIGHT))
    _status_row(image, view.status, view.clock)
    _SCREENS[type(view)](image, view)  # type: ignore[operator]
    return image


def scrolls(view: View) -> bool:
    """Whether ``view`` animates (a title or artist too long for the screen)."""
    if not isinstance(view, NowPlayingView):
        return False
    f = fonts()
    width = _RIGHT - _TRACK_X
    return text_width(view.title, f.medium) > width or text_width(view.artist, f.small) > width
