"""The core subcommands: run, demo, classify and config check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from device import __version__
from device.app import Daemon, Parts, install_signal_handlers
from device.config import EX_CONFIG, REPO_CONFIG, Config, ConfigError, load_config, load_config_or_exit
from device.events import MoodChanged, PipelineStats
from device.outputs import OutputContext, build_outputs
from device.systemd import Notifier, setup_logging
from device.topics import box_id

__all__ = ["build_daemon", "register"]

log = logging.getLogger(__name__)

#: Exit code for a model that fails its checks at start-up: like a config error,
#: restarting will not help until someone flashes a good one.
EX_MODEL = EX_CONFIG


def build_daemon(config: Config, context: OutputContext, extra_outputs: list | None = None) -> Daemon:
    """Wire camera, detector, classifier, stabiliser and outputs from ``config``."""
    from device.camera import open_camera
    from device.emotion import EmotionClassifier
    from device.faces import FaceDetector
    from device.mood import Stabiliser

    classifier = EmotionClassifier.from_config(config)
    camera_path = config.resolve(config.camera.path) if config.camera.source == "replay" else None
    parts = Parts(
        camera_factory=lambda: open_camera(config.camera, camera_path),
        detector=FaceDetector(config.detector),
        classifier=classifier,
        stabiliser=Stabiliser(config.mood),
        notifier=Notifier.from_environment(),
        outputs=build_outputs(config, context) + list(extra_outputs or []),
    )
    return Daemon(config, parts)


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    setup_logging(config.log.level)
    from device.emotion import ModelError

    state_dir = config.resolve(config.state.dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    context = OutputContext(state_dir=state_dir, box_id=box_id(config), version=__version__)
    try:
        daemon = build_daemon(config, context)
    except ModelError as exc:
        log.error("model refused: %s", exc)
        return EX_MODEL
    install_signal_handlers(daemon)
    return daemon.run()


class _DemoPrinter:
    """Prints the loop's figures once per second, for a person watching the demo."""

    name = "demo"
    commands: frozenset[str] = frozenset()

    def __init__(self, stream=sys.stdout) -> None:
        self.stream = stream
        self.mood = "-"
        self.confidence = 0.0
        self.seconds = 0

    def start(self, bus) -> None:
        pass

    def handle(self, event: object) -> None:
        if isinstance(event, MoodChanged):
            self.mood, self.confidence = event.mood, event.confidence
        elif isinstance(event, PipelineStats):
            self.seconds += 1
            face = "yes" if event.face_present else "no "
            print(f"{self.seconds:4d}s  fps {event.fps:4.1f}  face {face}  mood {self.mood:<8} "
                  f"confidence {self.confidence:.2f}  detect {event.detect_ms:5.1f} ms  "
                  f"classify {event.classify_ms:4.2f} ms", file=self.stream, flush=True)

    def stop(self) -> None:
        pass


def _demo_config(config: Config, source: Path, out: Path) -> Config:
    camera = config.camera.model_copy(update={"source": "replay", "path": str(source), "loop": False})
    pipeline = config.pipeline.model_copy(update={"stats_interval_s": 1.0})
    state = config.state.model_copy(update={"dir": str(out / "state")})
    display = config.display.model_copy(update={"emulator_dir": str(out / "display")})
    return config.model_copy(update={"camera": camera, "pipeline": pipeline, "state": state, "display": display})


def cmd_demo(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config or str(REPO_CONFIG))
    setup_logging("WARNING" if not args.verbose else "INFO")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="moodbox-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.input:
        source = Path(args.input)
        if not source.exists():
            print(f"--input {source}: no such file or folder", file=sys.stderr)
            return 2
    else:
        from device.demo_input import write_demo_frames

        # 12 s of a face, then 12 s of an empty room: long enough to see a mood
        # settle (smoothing + dwell) and then give way to no_face.
        source = write_demo_frames(out / "input", face_frames=120, empty_frames=120)
    config = _demo_config(config, source, out)
    context = OutputContext(state_dir=out / "state", demo=True, box_id=box_id(config), version=__version__)
    context.state_dir.mkdir(parents=True, exist_ok=True)
    daemon = build_daemon(config, context, extra_outputs=[_DemoPrinter()])
    install_signal_handlers(daemon)
    print(f"moodbox demo: replaying {source} at {config.camera.fps:g} fps, processing at "
          f"{config.pipeline.fps:g} fps; output in {out}", flush=True)
    code = daemon.run()
    print(f"done: {daemon.timings.frames} frames, {daemon.timings.faces} with a face; output in {out}")
    return code


def cmd_classify(args: argparse.Namespace) -> int:
    import cv2

    from device.emotion import EmotionClassifier, ModelError
    from device.faces import FaceDetector
    from device.preprocess import EMOTIONS

    config = load_config_or_exit(args.config or str(REPO_CONFIG))
    try:
        classifier = EmotionClassifier.from_config(config)
    except ModelError as exc:
        print(f"model refused: {exc}", file=sys.stderr)
        return EX_MODEL
    detector = FaceDetector(config.detector)
    results, code = [], 0
    for path in args.images:
        image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if image is None:
            print(f"{path}: not a readable image", file=sys.stderr)
            code = 1
            continue
        faces = []
        for box in detector.detect_all(image):
            probabilities = classifier.classify(image, box)
            ranked = dict(zip(EMOTIONS, (round(float(p), 4) for p in probabilities)))
            faces.append({"box": [int(v) for v in box], "probabilities": ranked,
                          "emotion": max(ranked, key=ranked.get)})
        results.append({"image": path, "faces": faces})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if not result["faces"]:
                print(f"{result['image']}: no face found")
            for face in result["faces"]:
                top = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])[:3]
                shown = ", ".join(f"{name} {p:.0%}" for name, p in top)
                print(f"{result['image']}: face at {tuple(face['box'])}: {face['emotion']} ({shown})")
    return code


def cmd_config_check(args: argparse.Namespace) -> int:
    path = args.path
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    where = path or "the default config"
    print(f"{where}: ok (camera {config.camera.source}, model {config.model.path}, "
          f"{config.pipeline.fps:g} fps, state in {config.state.dir})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="config file (default /etc/moodbox/config.toml)")
    run.set_defaults(func=cmd_run)

    demo = subparsers.add_parser("demo", help="the whole loop on a replayed input, no hardware needed")
    demo.add_argument("--input", help="image folder or video file (default: a built-in astronaut sequence)")
    demo.add_argument("--out", help="folder for the display frames, state and logs (default: a temp dir)")
    demo.add_argument("--config", help="config file (default: the repository's config.toml)")
    demo.add_argument("-v", "--verbose", action="store_true", help="log events as well")
    demo.set_defaults(func=cmd_demo)

    classify = subparsers.add_parser("classify", help="find faces in photos and print their emotions")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--json", action="store_true", help="machine-readable output")
    classify.add_argument("--config", help="config file (default: the repository's config.toml)")
    classify.set_defaults(func=cmd_classify)

    config = subparsers.add_parser("config", help="config file tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and say what is wrong")
    check.add_argument("path", nargs="?", help="config file (default /etc/moodbox/config.toml, else the repo's)")
    check.set_defaults(func=cmd_config_check)
