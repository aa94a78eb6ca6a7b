"""config.toml -> typed, validated settings.

Every default lives in the repository's ``config.toml``; the models below
repeat them so a partial config file works, and a test checks the two agree.
Unknown keys are errors (``extra="forbid"``), reported with their line and the
closest valid key, so a typo never silently turns a feature off.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

__all__ = [
    "DEFAULT_PATH",
    "EX_CONFIG",
    "Config",
    "ConfigError",
    "load_config",
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
    region_frames: int = Field(4, ge=0, le=100, description="frames searched near the last face before a full pass")
    region_scale: float = Field(2.0, ge=1.2, le=4.0, description="search region side / last face side")
    crop_margin: float = Field(0.1, ge=0.0, le=0.5, description="border added around the face, fraction of its side")


class ModelConfig(Section):
    path: str = Field("models/emotion_int8.tflite", description="int8 TFLite model; metadata JSON beside it")
    threads: int = Field(1, ge=1, le=8, description="interpreter threads")
    flip_tta: bool = Field(False, description="average with the mirrored face (doubles classify time)")


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


class Config(Section):
    config_version: int = Field(1, ge=1, le=1, description="config layout version")
    camera: CameraConfig = CameraConfig()
    detector: DetectorConfig = DetectorConfig()
    model: ModelConfig = ModelConfig()
    pipeline: PipelineConfig = PipelineConfig()
    mood: MoodConfig = MoodConfig()
    state: StateConfig = StateConfig()
    log: LogConfig = LogConfig()

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


def secret(value: SecretStr | None) -> str:
    """The plain text of a secret, for the one place that sends it."""
    return value.get_secret_value() if value is not None else ""
