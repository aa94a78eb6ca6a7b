"""Pictures for a 1-bit 128x64 OLED: fonts, status icons and one face per mood.

Everything is drawn with PIL primitives or small bitmaps written out below, so
the box needs no font or image files. Fonts are Pillow's built-in scalable
font, loaded once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FACE_SIZE",
    "ICON_SIZE",
    "ICONS",
    "Fonts",
    "IconState",
    "draw_face",
    "draw_icon",
    "fonts",
    "icon_image",
]

#: Side of a face glyph, px.
FACE_SIZE = 40
#: Side of a status icon, px.
ICON_SIZE = 11

#: How a status icon is shown: plain, stippled while starting, struck through
#: when switched off, inverted when something needs the user, or not at all.
IconState = Literal["ok", "pending", "off", "error", "hidden"]


@dataclass(frozen=True)
class Fonts:
    small: ImageFont.FreeTypeFont  # 10 px: hints, artist, clock
    medium: ImageFont.FreeTypeFont  # 12 px: titles
    large: ImageFont.FreeTypeFont  # 16 px: the mood label


@functools.cache
def fonts() -> Fonts:
    """Pillow's built-in font at three sizes, loaded on first use only."""
    return Fonts(
        small=ImageFont.load_default(size=10),
        medium=ImageFont.load_default(size=12),
        large=ImageFont.load_default(size=16),
    )


_ICON_ART = {
    "camera": """
        ...........
        ...###.....
        ###########
        #.........#
        #...###...#
        #..#...#..#
        #..#...#..#
        #..#...#..#
        #...###...#
        #.........#
        ###########""",
    "network": """
        ...........
        ..#######..
        .#.......#.
        #..#####..#
        ..#.....#..
        .#..###..#.
        ...#...#...
        ...........
        ....###....
        ....###....
        ...........""",
    "mqtt": """
        ...........
        .#.......#.
        #..#...#..#
        #.#.....#.#
        #.#..#..#.#
        #.#.###.#.#
        #.#..#..#.#
        #..#.#.#..#
        .#...#...#.
        .....#.....
        ....###....""",
    "spotify": """
        ...#####...
        .#########.
        .#########.
        ##.......##
        #.#######.#
        ###.....###
        ##.#####.##
        ####...####
        .##.###.##.
        .#########.
        ...#####...""",
    "model": """
        ..#.#.#.#..
        .#########.
        ##.......##
        .#.#####.#.
        ##.#...#.##
        .#.#...#.#.
        ##.#####.##
        .#.......#.
        ##.......##
        .#########.
        ..#.#.#.#..""",
    "music": """
        ...........
        ...#######.
        ...#######.
        ...#.....#.
        ...#.....#.
        ...#.....#.
        ...#.....#.
        .###...###.
        ####..####.
        ####..####.
        .##....##..""",
    "playlist": """
        ...........
        #######....
        ...........
        #######....
        ...........
        ####....#..
        ........##.
        ####....#.#
        ........#..
        ......###..
        ......###..""",
}


def _bitmap(art: str) -> Image.Image:
    rows = [row.strip() for row in art.strip().splitlines()]
    if len(rows) != ICON_SIZE or any(len(row) != ICON_SIZE for row in rows):
        raise ValueError(f"icon art must be {ICON_SIZE}x{ICON_SIZE}")
    image = Image.new("1", (ICON_SIZE, ICON_SIZE))
    image.putdata([1 if c == "#" else 0 for row in rows for c in row])
    return image


#: The icon bitmaps, built once at import (plain PIL images, no hardware).
ICONS: dict[str, Image.Image] = {name: _bitmap(art) for name, art in _ICON_ART.items()}

_STIPPLE = Image.new("1", (ICON_SIZE, ICON_SIZE))
_STIPPLE.putdata([(x + y) % 2 == 0 for y in range(ICON_SIZE) for x in range(ICON_SIZE)])


def icon_image(name: str, state: IconState = "ok", scale: int = 1) -> Image.Image:
    """The icon ``name`` drawn for ``state``, ``scale`` times its size (nearest neighbour)."""
    base = ICONS[name]
    if state == "hidden":
        image = Image.new("1", base.size)
    elif state == "pending":
        image = Image.new("1", base.size)
        image.paste(base, mask=_STIPPLE)
    elif state == "error":
        # Inverted, so a problem stands out in a row of normal icons.
        image = Image.new("1", base.size, 1)
        image.paste(0, mask=base)
    else:
        image = base.copy()
        if state == "off":
            draw = ImageDraw.Draw(image)
            draw.line((0, ICON_SIZE - 1, ICON_SIZE - 1, 0), fill=0, width=3)
            draw.line((0, ICON_SIZE - 1, ICON_SIZE - 1, 0), fill=1, width=1)
    if scale != 1:
        image = image.resize((ICON_SIZE * scale, ICON_SIZE * scale), Image.Resampling.NEAREST)
    return image


def draw_icon(image: Image.Image, name: str, xy: tuple[int, int], state: IconState = "ok", scale: int = 1) -> None:
    """Draw the icon onto a 1-bit ``image`` with its top-left corner at ``xy``."""
    if state != "hidden":
        image.paste(icon_image(name, state, scale), xy)


# --- faces -------------------------------------------------------------------
# Each draws features inside a FACE_SIZE circle whose top-left corner is (x, y).
# They exaggerate the one feature people read first: the mouth for happy and
# sad, brows for angry and fear, the open "O" for surprise.

_Face = Callable[[ImageDraw.ImageDraw, int, int], None]


def _dot_eyes(d: ImageDraw.ImageDraw, x: int, y: int, top: int = 13) -> None:
    d.ellipse((x + 11, y + top, x + 15, y + top + 4), fill=1)
    d.ellipse((x + 24, y + top, x + 28, y + top + 4), fill=1)


def _happy(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    # Closed, smiling eyes and a wide open grin.
    d.arc((x + 9, y + 11, x + 17, y + 19), 200, 340, fill=1, width=2)
    d.arc((x + 22, y + 11, x + 30, y + 19), 200, 340, fill=1, width=2)
    d.pieslice((x + 10, y + 16, x + 29, y + 33), 0, 180, fill=1)


def _sad(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    _dot_eyes(d, x, y)
    d.arc((x + 11, y + 25, x + 28, y + 38), 200, 340, fill=1, width=2)
    d.ellipse((x + 25, y + 19, x + 28, y + 24), fill=1)  # a tear


def _angry(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.line((x + 8, y + 9, x + 17, y + 13), fill=1, width=2)
    d.line((x + 31, y + 9, x + 22, y + 13), fill=1, width=2)
    _dot_eyes(d, x, y, top=15)
    # Clenched teeth.
    d.rectangle((x + 12, y + 25, x + 27, y + 31), outline=1, width=1)
    d.line((x + 12, y + 28, x + 27, y + 28), fill=1)
    for tooth in (16, 20, 24):
        d.line((x + tooth, y + 25, x + tooth, y + 31), fill=1)


def _surprise(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    d.arc((x + 9, y + 5, x + 17, y + 11), 200, 340, fill=1, width=1)
    d.arc((x + 22, y + 5, x + 30, y + 11), 200, 340, fill=1, width=1)
    d.ellipse((x + 10, y + 11, x + 16, y + 17), outline=1, width=1)
    d.ellipse((x + 23, y + 11, x + 29, y + 17), outline=1, width=1)
    d.point([(x + 13, y + 14), (x + 26, y + 14)], fill=1)
    d.ellipse((x + 15, y + 22, x + 24, y + 33), outline=1, width=2)


def _fear(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    # Brows raised in the middle, wide eyes, a trembling mouth.
    d.line((x + 8, y + 11, x + 16, y + 7), fill=1, width=2)
    d.line((x + 31, y + 11, x + 23, y + 7), fill=1, width=2)
    d.ellipse((x + 10, y + 13, x + 16, y + 19), outline=1, width=1)
    d.ellipse((x + 23, y + 13, x + 29, y + 19), outline=1, width=1)
    d.point([(x + 13, y + 16), (x + 26, y + 16)], fill=1)
    d.line([(x + 10, y + 30), (x + 13, y + 27), (x + 16, y + 30), (x + 19, y + 27),
            (x + 22, y + 30), (x + 25, y + 27), (x + 28, y + 30)], fill=1, width=1)


def _disgust(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    # One eye squeezed shut, one brow down, the mouth pulled up on one side.
    d.line((x + 9, y + 15, x + 17, y + 15), fill=1, width=2)
    d.line((x + 22, y + 9, x + 30, y + 11), fill=1, width=2)
    d.ellipse((x + 24, y + 13, x + 28, y + 17), fill=1)
    d.line([(x + 11, y + 28), (x + 16, y + 25), (x + 21, y + 29), (x + 28, y + 24)], fill=1, width=2)


def _neutral(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    _dot_eyes(d, x, y, top=14)
    d.line((x + 12, y + 28, x + 27, y + 28), fill=1, width=2)


def _no_face(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
    # An empty, dashed outline: nobody is there.
    font = fonts().large
    left, top, right, bottom = font.getbbox("?")
    d.text((x + (FACE_SIZE - (right - left)) // 2 - left, y + (FACE_SIZE - (bottom - top)) // 2 - top),
           "?", font=font, fill=1)


_FACES: dict[str, _Face] = {
    "angry": _angry,
    "disgust": _disgust,
    "fear": _fear,
    "happy": _happy,
    "sad": _sad,
    "surprise": _surprise,
    "neutral": _neutral,
}


def draw_face(image: Image.Image, mood: str, xy: tuple[int, int]) -> None:
    """Draw the face for ``mood`` (an EMOTIONS name) at ``xy``; NO_FACE and unknown moods get a dashed '?'."""
    x, y = xy
    draw = ImageDraw.Draw(image)
    box = (x, y, x + FACE_SIZE - 1, y + FACE_SIZE - 1)
    if mood in _FACES:
        draw.ellipse(box, outline=1, width=2)
        _FACES[mood](draw, x, y)
        return
    for start in range(0, 360, 30):
        draw.arc(box, start, start + 15, fill=1, width=2)
    _no_face(draw, x, y)
