"""config.toml -> typed, validated settings.

Every default lives in the repository's ``config.toml``; the models below
repeat them so a partial config file works, and a test checks the two agree.
Unknown keys are errors (``extra="forbid"``), reported with their line and the
closest valid key, so a typo never silently turns a feature off.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

__all__ = [
    "DEFAULT_PATH",
    "EX_CONFIG",
    "Config",
    "ConfigError",
    "load_config",
    "load_config_or_exit",
]

#: Where the daemon looks on the box; ``--config`` overrides.
DEFAULT_PATH = Path("/etc/moodbox/config.toml")
#: sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus= stops a restart loop on it.
EX_CONFIG = 78
#: Secrets may also come from here (mode 0600, owned by the service user) or the environment.
SECRETS_FILE = "secrets.toml"
SECRET_ENV = {
    ("spotify", "client_secret"): "MOODBOX_SPOTIFY_CLIENT_SECRET",
    ("mqtt", "password"): "MOODBOX_MQTT_PASSWORD",
}

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class CameraConfig(Section):
    source: Literal["auto", "picamera2", "opencv", "replay"] = Field(
        "auto", description="auto tries picamera2, then /dev/video0"
    )
    path: str = Field("", description="opencv: device index or path; replay: video file or image folder")
    width: int = Field(640, ge=64, le=4096, description="capture width, px")
    height: int = Field(480, ge=48, le=4096, description="capture height, px")
    fps: float = Field(10.0, gt=0, le=120, description="capture rate, frames/s")
    loop: bool = Field(True, description="replay: start over at the end of the input")
    read_timeout_s: float = Field(2.0, gt=0, le=60, description="a read slower than this counts as a stall")
    reopen_max_s: float = Field(30.0, ge=1, le=600, description="longest wait between reopen attempts")


class DetectorConfig(Section):
    detect_width: int = Field(320, ge=80, le=1920, description="frames are downscaled to this width for detection, px")
    scale_factor: float = Field(1.2, gt=1.0, le=2.0, description="Haar pyramid step")
    min_neighbors: int = Field(5, ge=1, le=20, description="Haar hits needed to accept a face")
    min_size: int = Field(40, ge=12, le=480, description="smallest face, px in the full frame")
    region_frames: int = Field(9, ge=0, le=100, description="frames searched near the last face before a full pass")
    region_scale: float = Field(2.0, ge=1.2, le=4.0, description="search region side / last face side")
    crop_margin: float = Field(0.1, ge=0.0, le=0.5, description="border added around the face, fraction of its side")


class ModelConfig(Section):
    path: str = Field("models/emotion_int8.tflite", description="int8 TFLite model; metadata JSON beside it")
    threads: int = Field(1, ge=1, le=8, description="interpreter threads")
    flip_tta: bool = Field(True, description="average with the mirrored face (doubles classify time)")
    zoom_tta: tuple[float, ...] = Field((0.93,), description="also average over the face zoomed by these factors")

    @field_validator("zoom_tta")
    @classmethod
    def _sensible_zooms(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        # Beyond these the face loses its chin and brows, or shrinks into a reflected
        # border the model never saw in training (it was trained with zoom up to ±10 %).
        wrong = [z for z in value if not 0.8 <= z <= 1.25 or z == 1.0]
        if wrong:
            raise ValueError(f"zoom factors must lie in 0.8-1.25 and not be 1.0 (the face itself); got {wrong}")
        if len(set(value)) != len(value):
            raise ValueError(f"zoom factors repeat: {list(value)}")
        return value


class PipelineConfig(Section):
    fps: float = Field(5.0, gt=0, le=60, description="processing rate, frames/s")
    stats_interval_s: float = Field(5.0, ge=1, le=3600, description="how often loop figures are published, s")


class MoodConfig(Section):
    smoothing_s: float = Field(2.5, gt=0, le=60, description="EMA time constant of the probabilities, s")
    confidence: float = Field(0.5, ge=0, le=1, description="smoothed probability needed to accept a mood")
    hysteresis: float = Field(0.1, ge=0, le=1, description="a new mood must beat the current one by this margin")
    min_dwell_s: float = Field(5.0, ge=0, le=600, description="a candidate must hold this long before it switches, s")
    no_face_s: float = Field(10.0, gt=0, le=3600, description="seconds without a face before mood becomes no_face")


class StateConfig(Section):
    dir: str = Field("/var/lib/moodbox", description="history, caches, tokens")


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")


class MqttConfig(Section):
    enabled: bool = Field(False, description="connect to an MQTT broker and announce the box to Home Assistant")
    host: str = Field("localhost", min_length=1, description="broker host name or IP")
    port: int = Field(1883, ge=1, le=65535, description="broker port (usually 1883, or 8883 with TLS)")
    username: str = Field("", description="broker user; empty connects anonymously")
    password: SecretStr | None = Field(None, description="broker password (or MOODBOX_MQTT_PASSWORD / secrets.toml)")
    tls: bool = Field(False, description="connect with TLS; implied by tls_ca or tls_cert")
    tls_ca: str = Field("", description="CA certificate (PEM) that signed the broker's; empty uses the system CAs")
    tls_cert: str = Field("", description="client certificate (PEM), for brokers that require one")
    tls_key: str = Field("", description="private key of tls_cert (PEM, no passphrase)")
    tls_insecure: bool = Field(False, description="skip the broker host name check (the chain is still checked)")
    box_id: str = Field("", max_length=64, description="id in topics; empty derives one from /etc/machine-id")
    base_topic: str = Field("moodbox/{box_id}", description="prefix of every topic this box uses")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's MQTT discovery prefix")
    discovery: Literal["device", "per_entity", "off"] = Field(
        "device", description="device: one message (HA 2024.11+); per_entity: one per entity; off"
    )
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version")
    keepalive: int = Field(60, ge=5, le=3600, description="seconds between keep-alive pings")
    client_id: str = Field("", max_length=128, description="MQTT client id; empty uses moodbox-<box_id>")
    max_payload_bytes: int = Field(1024, ge=64, le=65536, description="larger command payloads are refused, bytes")
    stats_interval_s: float = Field(60.0, ge=1, le=3600, description="how often figures go to <base>/stats, s")
    command_timeout_s: float = Field(10.0, ge=1, le=300, description="a command unanswered this long fails, s")
    reconnect_min_s: int = Field(1, ge=1, le=60, description="first wait before reconnecting, s")
    reconnect_max_s: int = Field(120, ge=1, le=3600, description="longest wait between reconnects, s")

    @field_validator("base_topic", "discovery_prefix")
    @classmethod
    def _topic_prefix(cls, value: str, info: ValidationInfo) -> str:
        # Wildcards or empty levels would make the box subscribe to, or clear, other devices' topics.
        plain = value.replace("{box_id}", "x") if info.field_name == "base_topic" else value
        if any(not level for level in plain.split("/")):
            raise ValueError("must be topic levels joined by '/', with no empty level or leading/trailing '/'")
        if any(c in plain for c in "+#{}\0") or plain.startswith("$"):
            placeholder = " (other than {box_id})" if info.field_name == "base_topic" else ""
            raise ValueError(f"must not contain '+', '#' or braces{placeholder}, nor start with '$'")
        return value

    @field_validator("tls_key")
    @classmethod
    def _tls_pair(cls, value: str, info: ValidationInfo) -> str:
        # A field (not model) validator: a model error would print the whole section, password included.
        if bool(value) != bool(info.data.get("tls_cert")):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return value


#: The moods a playlist can be tagged with: device.preprocess.EMOTIONS (a test keeps them equal).
MoodName = Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

_PLAYLIST_ID = re.compile(r"^[0-9A-Za-z]{1,64}$")


class SpotifyConfig(Section):
    enabled: bool = Field(True, description="play music on a Spotify Connect device (needs Premium)")
    client_id: str = Field("", description="the app's Client ID from developer.spotify.com; empty: music stays off")
    client_secret: SecretStr = Field(SecretStr(""), description="app secret; empty uses PKCE (secrets.toml or env)")
    redirect_uri: str = Field("http://127.0.0.1:8888/callback", description="loopback IP redirect URI, as registered")
    device_name: str = Field("moodbox", min_length=1, description="Spotify Connect device to play on (case-insensitive)")
    api_base: str = Field("https://api.spotify.com/v1/", description="Web API root URL")
    accounts_base: str = Field("https://accounts.spotify.com", description="accounts service root URL")
    timeout_s: float = Field(5.0, gt=0, le=60, description="a request waiting longer than this fails, s")
    backoff_max_s: float = Field(300.0, ge=1, le=3600, description="longest wait between retries after errors, s")

    @field_validator("redirect_uri")
    @classmethod
    def _loopback_redirect(cls, value: str) -> str:
        parts = urlsplit(value)
        host = parts.hostname or ""
        if host == "localhost":
            raise ValueError("Spotify no longer accepts 'localhost' redirect URIs: use a loopback IP literal such "
                             "as http://127.0.0.1:8888/callback, and register exactly that URI for the app")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if parts.scheme not in ("http", "https") or not loopback:
            raise ValueError("must be a loopback IP URI such as http://127.0.0.1:8888/callback (the box has no "
                             "browser: you paste the redirected address back into 'moodbox spotify login')")
        return value

    @field_validator("api_base", "accounts_base")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        # spotipy joins the API root and a path by plain concatenation.
        return value.rstrip("/") + "/" if info.field_name == "api_base" else value.rstrip("/")


class PlaylistConfig(Section):
    uri: str = Field(description="spotify:playlist:<id>, or its open.spotify.com link")
    name: str = Field(min_length=1, max_length=64, description="short name for the display and history")
    moods: tuple[MoodName, ...] = Field((), description="moods the uplift policy plays this playlist for")
    valence: float = Field(ge=-1, le=1, description="how pleasant the music is, -1 (sad, tense) .. 1 (joyful)")
    arousal: float = Field(ge=-1, le=1, description="how energetic the music is, -1 (sleepy) .. 1 (intense)")

    @field_validator("uri")
    @classmethod
    def _playlist_uri(cls, value: str) -> str:
        text = value.strip()
        if text.startswith(("https://", "http://")):
            parts = urlsplit(text)
            segments = [s for s in parts.path.split("/") if s and not s.startswith("intl-")]
            if parts.hostname == "open.spotify.com" and len(segments) == 2 and segments[0] == "playlist":
                text = f"spotify:playlist:{segments[1]}"
        kind, _, ident = text.rpartition(":")
        if kind != "spotify:playlist" or not _PLAYLIST_ID.match(ident):
            raise ValueError("must be a playlist URI like spotify:playlist:<id> "
                             "or a link like https://open.spotify.com/playlist/<id>")
        return text


class MusicConfig(Section):
    policy: Literal["uplift", "match", "iso", "off"] = Field("uplift", description="how moods choose music")
    min_change_s: float = Field(60.0, ge=0, le=3600, description="least time between automatic changes, s")
    volume: int = Field(60, ge=-1, le=100, description="volume set when the box takes the device, %; -1 leaves it")
    iso_tracks: int = Field(3, ge=2, le=10, description="iso: tracks from matching the mood to the target")
    no_face: Literal["pause", "keep"] = Field("pause", description="what music does when nobody is seen")
    no_face_pause_s: float = Field(120.0, ge=0, le=86400, description="pause after no_face lasted this long, s")
    poll_s: float = Field(20.0, ge=2, le=300, description="longest gap between player state reads while playing, s")
    idle_poll_s: float = Field(60.0, ge=5, le=3600, description="gap between state reads while not playing, s")
    cache_refresh_s: float = Field(86400.0, ge=600, le=30 * 86400, description="playlist track cache age limit, s")
    learning: bool = Field(True, description="learn per mood which playlist helps (false: always the first)")
    feedback_weight: float = Field(2.0, ge=0, le=20, description="a like or skip counts as this many outcomes")
    playlists: tuple[PlaylistConfig, ...] = Field((), description="candidate playlists, see config.toml")

    @field_validator("playlists")
    @classmethod
    def _unique_playlists(cls, value: tuple[PlaylistConfig, ...]) -> tuple[PlaylistConfig, ...]:
        seen: dict[str, int] = {}
        for index, playlist in enumerate(value):
            if playlist.uri in seen:
                raise ValueError(f"entry {index} repeats the uri of entry {seen[playlist.uri]} ({playlist.uri})")
            seen[playlist.uri] = index
        return value


_HH_MM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class DisplayConfig(Section):
    enabled: bool = Field(True, description="show mood, music and status on a 128x64 OLED")
    driver: Literal["ssd1306", "sh1106", "dummy", "emulator"] = Field(
        "ssd1306", description="ssd1306/sh1106 over I2C; dummy: draw in memory; emulator: PNG frames"
    )
    i2c_port: int = Field(1, ge=0, le=31, description="I2C bus number: 1 is /dev/i2c-1, GPIO 2/3 on the Pi")
    address: int = Field(0x3C, description="I2C address of the display: 0x3C or 0x3D")
    rotation: int = Field(0, description="0: as mounted; 2: turned 180 degrees")
    contrast: int = Field(200, ge=0, le=255, description="brightness while in use, 0-255")
    max_fps: float = Field(4.0, gt=0, le=10, description="most frames sent to the display per second")
    dim_after_s: float = Field(300.0, ge=0, le=86400, description="dim after this long with nothing new, s; 0: never")
    dim_contrast: int = Field(16, ge=0, le=255, description="brightness when dimmed, 0-255, at most contrast")
    night_start: str = Field("23:00", description="HH:MM local time the display goes dark")
    night_end: str = Field("07:00", description="HH:MM it wakes up again; equal to night_start: never dark")
    shift_interval_s: float = Field(120.0, ge=0, le=86400, description="move the picture by 1 px this often, s; 0: never")
    emulator_dir: str = Field("oled-frames", description="emulator driver and demo: folder for the PNG frames")

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        # Accept "0x3C" as written on the module's silkscreen as well as the TOML integer 0x3C.
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise ValueError("must be 0x3C or 0x3D") from None
        if isinstance(value, int) and value not in (0x3C, 0x3D):
            raise ValueError(f"must be 0x3C or 0x3D (SSD1306/SH1106 modules use only these), not {value:#04x}")
        return value

    @field_validator("rotation")
    @classmethod
    def _rotation(cls, value: int) -> int:
        # 1 and 3 would make the canvas 64x128; the screens are laid out landscape.
        if value not in (0, 2):
            raise ValueError("must be 0 or 2 (180 degrees); portrait mounting (1, 3) is not supported")
        return value

    @field_validator("dim_contrast")
    @classmethod
    def _dim_contrast(cls, value: int, info: ValidationInfo) -> int:
        contrast = info.data.get("contrast")
        if contrast is not None and value > contrast:
            raise ValueError(f"must not be brighter than contrast ({contrast})")
        return value

    @field_validator("night_start", "night_end")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        if not _HH_MM.match(value):
            raise ValueError('must be a 24-hour time "HH:MM", e.g. "23:00"')
        return value


class Config(Section):
    config_version: int = Field(1, ge=1, le=1, description="config layout version")
    camera: CameraConfig = CameraConfig()
    detector: DetectorConfig = DetectorConfig()
    model: ModelConfig = ModelConfig()
    pipeline: PipelineConfig = PipelineConfig()
    mood: MoodConfig = MoodConfig()
    state: StateConfig = StateConfig()
    log: LogConfig = LogConfig()
    mqtt: MqttConfig = MqttConfig()
    spotify: SpotifyConfig = SpotifyConfig()
    music: MusicConfig = MusicConfig()
    display: DisplayConfig = DisplayConfig()

    #: Set by load_config: the folder relative paths in the file are resolved against.
    base_dir: str = Field("", exclude=True, description="internal")

    def resolve(self, path: str) -> Path:
        """A path from the config, made absolute against the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir or ".") / p


class ConfigError(Exception):
    """One or more problems in a config file, each already phrased for a person."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the dotted key ``loc`` in TOML ``text``, best effort."""
    parts = [str(part) for part in loc if not isinstance(part, int)]
    if not parts:
        return None
    *sections, key = parts
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(rf"^\s*(\"?){re.escape(key)}\1\s*=")
    current, wanted = "", ".".join(sections)
    for number, line in enumerate(text.splitlines(), start=1):
        match = header.match(line)
        if match:
            current = match.group(1)
            if current == ".".join(parts):  # the key is itself a [section]
                return number
        elif current == wanted and key_re.match(line):
            return number
    return _line_of(text, tuple(sections)) if sections else None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidates = [annotation, *(inner or ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return model
        model = nested
    return model


def _describe(error: dict[str, Any], text: str) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc)
    line = _line_of(text, loc)
    where = f" (line {line})" if line else ""
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = sorted(k for k in parent.model_fields if k != "base_dir") if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        section = ".".join(str(p) for p in loc[:-1]) or "the top level"
        return f"unknown key '{dotted}'{where}{hint} Valid keys in {section}: {', '.join(valid)}"
    value = error.get("input")
    shown = "********" if loc and loc[-1] in {"client_secret", "password"} else repr(value)
    return f"'{dotted}'{where} = {shown}: {error['msg']}"


def _merge_secrets(data: dict[str, Any], config_dir: Path) -> None:
    """Fill secret keys from $CREDENTIALS_DIRECTORY, secrets.toml beside the config, or env vars."""
    sources = []
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        sources.append(Path(creds) / SECRETS_FILE)
    sources.append(config_dir / SECRETS_FILE)
    for source in sources:
        if source.is_file():
            with source.open("rb") as handle:
                secrets = tomllib.load(handle)
            for (section, key) in SECRET_ENV:
                if key in secrets.get(section, {}):
                    data.setdefault(section, {}).setdefault(key, secrets[section][key])
            break
    for (section, key), env in SECRET_ENV.items():
        if os.environ.get(env):
            data.setdefault(section, {})[key] = os.environ[env]


def parse_config(text: str, name: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate TOML ``text``; raises ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [f"not valid TOML: {exc}"]) from None
    base = base_dir or Path(".")
    _merge_secrets(data, base)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(name, [_describe(e, text) for e in exc.errors()]) from None
    return config.model_copy(update={"base_dir": str(base.resolve())})


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a config file (default /etc/moodbox/config.toml, else the repo's)."""
    if path is None:
        path = DEFAULT_PATH if DEFAULT_PATH.exists() else REPO_CONFIG
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    return parse_config(text, str(path), path.resolve().parent)


def load_config_or_exit(path: str | Path | None = None) -> Config:
    """For command-line entry points: the config, or its problems on stderr and exit code 78."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def secret(value: SecretStr | None) -> str:
    """The plain text of a secret, for the one place that sends it."""
    return value.get_secret_value() if value is not None else ""
