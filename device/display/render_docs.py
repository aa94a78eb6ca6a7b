"""Pictures of every OLED screen for the README: ``python -m device.display.render_docs [--out DIR]``.

Each screen is drawn from a sample view model by the same code the box runs,
then scaled up with a dark bezel and a faint pixel grid so it reads like the
real panel. The test suite checks the same samples against golden PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from device.display.glyphs import FACE_SIZE, draw_face
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
from device.display.state import message_for
from device.events import NO_FACE
from device.preprocess import EMOTIONS

__all__ = ["SAMPLES", "faces_sheet", "main", "oled_picture"]

REPO = Path(__file__).resolve().parent.parent.parent
DOCS_DIR = REPO / "docs" / "screens"

_ALL_OK = StatusIcons(camera="ok", network="ok", mqtt="ok", spotify="ok")
_CLOCK = "19:42"


def _error(component: str, state: str, status: StatusIcons) -> MessageView:
    title, hint = message_for(component, state)
    return MessageView(title, hint, status, _CLOCK)


#: One sample per screen (and per error the box explains), named as their PNG files.
SAMPLES: dict[str, View] = {
    "mood_happy": MoodView("happy", 0.78, status=_ALL_OK, clock=_CLOCK),
    "mood_override": MoodView("sad", 1.0, override=True, status=_ALL_OK, clock=_CLOCK),
    "mood_no_face": MoodView(NO_FACE, 0.0, status=_ALL_OK, clock=_CLOCK),
    "now_playing": NowPlayingView("Here Comes the Sun - Remastered 2009", "The Beatles", "Uplifting",
                                  "uplift · calm", True, 0, _ALL_OK, _CLOCK),
    "now_playing_scrolled": NowPlayingView("Here Comes the Sun - Remastered 2009", "The Beatles", "Uplifting",
                                           "uplift · calm", True, 60, _ALL_OK, _CLOCK),
    "now_playing_paused": NowPlayingView("Clair de Lune", "Claude Debussy", "Calm evening", "", False, 0,
                                         _ALL_OK, _CLOCK),
    "error_spotify_login": _error("spotify", "login_needed", StatusIcons("ok", "ok", "ok", "error")),
    "error_spotify_premium": _error("spotify", "premium_required", StatusIcons("ok", "ok", "ok", "error")),
    "error_speaker_missing": _error("spotify", "device_missing", StatusIcons("ok", "ok", "ok", "error")),
    "error_no_camera": _error("camera", "camera_lost", StatusIcons("error", "ok", "ok", "ok")),
    "error_broker": _error("mqtt", "unreachable", StatusIcons("ok", "ok", "error", "ok")),
    "error_mqtt_auth": _error("mqtt", "auth_failed", StatusIcons("ok", "ok", "error", "ok")),
    "error_model_refused": _error("model", "refused", _ALL_OK),
    "privacy": PrivacyView(StatusIcons("off", "ok", "ok", "ok"), _CLOCK),
    "boot": BootView((BootStep("Model", "done"), BootStep("Camera", "active"), BootStep("Spotify", "done"),
                      BootStep("MQTT", "failed")), "0.1.0", StatusIcons("pending", "ok", "error", "ok"), _CLOCK),
}


def faces_sheet() -> Image.Image:
    """Every mood's face side by side, four to a row, at the size the mood screen draws them."""
    moods = [*EMOTIONS, NO_FACE]
    cell = FACE_SIZE + 4
    sheet = Image.new("1", (4 * cell, 2 * cell))
    for i, mood in enumerate(moods):
        draw_face(sheet, mood, ((i % 4) * cell + 2, (i // 4) * cell + 2))
    return sheet


def oled_picture(image: Image.Image, scale: int = 4, border: int = 20) -> Image.Image:
    """``image`` as it looks on the panel: lit pixels in pale blue-white, a pixel grid, a dark bezel."""
    width, height = image.size
    lit = image.convert("L").resize((width * scale, height * scale), Image.Resampling.NEAREST)
    # Each pixel's last row and column stay dark: the gaps between real OLED pixels.
    grid = Image.new("L", lit.size, 255)
    draw = ImageDraw.Draw(grid)
    for x in range(scale - 1, lit.width, scale):
        draw.line((x, 0, x, lit.height), fill=0)
    for y in range(scale - 1, lit.height, scale):
        draw.line((0, y, lit.width, y), fill=0)
    mask = Image.composite(lit, Image.new("L", lit.size, 0), grid)
    glass = Image.new("RGB", lit.size, (6, 8, 10))
    glass.paste((214, 236, 255), mask=mask)
    picture = Image.new("RGB", (lit.width + 2 * border, lit.height + 2 * border), (28, 30, 33))
    ImageDraw.Draw(picture).rectangle((border // 2, border // 2, picture.width - border // 2 - 1,
                                       picture.height - border // 2 - 1), fill=(12, 13, 15))
    picture.paste(glass, (border, border))
    return picture


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device.display.render_docs", description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS_DIR, help=f"folder for the PNGs (default {DOCS_DIR})")
    parser.add_argument("--scale", type=int, default=4, help="pixels per OLED pixel (default 4)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = {name: render(view) for name, view in SAMPLES.items()}
    pictures["faces"] = faces_sheet()
    for name, image in pictures.items():
        oled_picture(image, args.scale).save(args.out / f"{name}.png", optimize=True)
    print(f"wrote {len(pictures)} pictures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
