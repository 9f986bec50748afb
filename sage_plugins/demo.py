"""Synthetic sensors for `sage-runtime --demo` (and the soak benchmark's load).

Why it exists: a first run on a box with no camera, microphone or IMU should still show every
built-in plugin doing real work on input of the kind it was built for, through the real ZeroMQ
ingest path, so `sagectl status` and a results subscriber have something true to show.

Streams (rates are multiples of `rate_hz`, the config's `demo.rate_hz`):

| sensor       | kind   | what                                                             | rate  | for       |
|--------------|--------|------------------------------------------------------------------|-------|-----------|
| `<p>.camera` | tensor | 48x64 RGB + validity alpha, uint8: a disc moving over a gradient,| 1x    | vision    |
|              |        | pixel noise, now and then a block of dropped pixels (alpha 0)    |       |           |
| `<p>.imu`    | tensor | 6 float32 (accel xyz, gyro xyz) following the disc's motion      | 2x    | memory    |
| `<p>.speech` | text   | a command from the language plugin's grammar, garbled at 10% CER | 1/5x  | language  |
|              |        | by the plugin's own ASR noise model (meta `clean`: the truth)    |       |           |
| `<p>.puzzle` | tensor | a 4x4 Sudoku, int32, 0 = blank (meta `solution`)                 | 1/20x | reasoning |

Content is a pure function of the seed and the frame index; only the timing is wall-clock.
Importing this module is cheap (no torch): the generators and the ZeroMQ client are imported in
the publishing thread, so `sage-runtime --help` and config validation stay fast.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from sage_runtime.config import SageConfig, resolve_state_dir

#: Entry-point names (group `sage_runtime.plugins`) of the plugins the demo turns on.
BUILTIN_PLUGINS = ("vision", "language", "memory", "reasoning")
CAMERA_SHAPE = (48, 64, 4)
IMU_DIM = 6
PUZZLE_SIZE = 4
#: Sensor name -> (rate as a multiple of the demo rate, declaration without expected_hz).
STREAMS: dict[str, tuple[float, dict[str, Any]]] = {
    "camera": (1.0, {"kind": "tensor", "policy": "latest", "modality": "image", "dtype": "uint8",
                     "max_shape": list(CAMERA_SHAPE)}),
    "imu": (2.0, {"kind": "tensor", "policy": "latest", "modality": "vector", "dtype": "float32",
                  "max_shape": [IMU_DIM]}),
    # Commands and puzzles are requests, not samples: queue them rather than keep only the newest.
    "speech": (0.2, {"kind": "text", "policy": "fifo:16", "modality": "text"}),
    "puzzle": (0.05, {"kind": "tensor", "policy": "fifo:4", "modality": "other", "dtype": "int32",
                      "max_shape": [PUZZLE_SIZE, PUZZLE_SIZE]}),
}
SPEECH_CER = 0.1  # the noise level the language plugin's quality is measured at
DROP_EVERY = 8    # about one camera frame in this many loses a block and some scattered pixels


def sensor_declarations(rate_hz: float, prefix: str = "demo") -> dict[str, dict[str, Any]]:
    """`ingest.sensors` entries for one set of demo streams named `<prefix>.<stream>`, declared at
    their nominal rates so the daemon can tell a slow sensor from a missing one."""
    return {f"{prefix}.{name}": {**decl, "expected_hz": rate_hz * factor}
            for name, (factor, decl) in STREAMS.items()}


def demo_overlay(cfg: SageConfig) -> SageConfig:
    """`cfg` plus the built-in plugins and the demo sensors; what the user configured wins (their
    plugins stay first and in order, their declaration of a same-named sensor is kept)."""
    data = cfg.model_dump()
    enabled = list(data["plugins"]["enabled"])
    data["plugins"]["enabled"] = enabled + [name for name in BUILTIN_PLUGINS if name not in enabled]
    data["ingest"]["sensors"] = {**sensor_declarations(cfg.demo.rate_hz), **data["ingest"]["sensors"]}
    # The demo's trust ledger and memory database are learnt from synthetic input: they live in a
    # `demo/` subdirectory, never where a real run restores its own from.
    data["runtime"]["state_dir"] = str(demo_state_dir(cfg))
    return SageConfig.model_validate(data)


def demo_state_dir(cfg: SageConfig) -> Path:
    """`<state dir>/demo`; idempotent, so a reload that overlays again lands in the same place."""
    base = resolve_state_dir(cfg)
    return base if base.name == "demo" else base / "demo"


class Camera:
    """A disc on a Lissajous path over a fixed gradient, with pixel noise and occasional dropouts
    (alpha 0), so vision has motion to track and holes to fill."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int] = CAMERA_SHAPE) -> None:
        self.rng = rng
        h, w, _ = shape
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
        t = (self.xx / max(w - 1, 1))[..., None]
        self.background = (c0 * (1 - t) + c1 * t).astype(np.float32)
        self.colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        self.radius = 0.15 * min(h, w)

    def position(self, k: int) -> tuple[float, float]:
        """Disc centre (y, x) in pixels at frame k."""
        h, w = self.yy.shape
        return (h / 2 + 0.35 * h * math.sin(0.07 * k), w / 2 + 0.35 * w * math.sin(0.11 * k + 1.0))

    def frame(self, k: int) -> np.ndarray:
        cy, cx = self.position(k)
        disc = (self.yy - cy) ** 2 + (self.xx - cx) ** 2 < self.radius ** 2
        img = np.where(disc[..., None], self.colour, self.background)
        img = img + self.rng.normal(0.0, 0.04, img.shape).astype(np.float32)
        alpha = np.full(img.shape[:2], 255, np.uint8)
        if self.rng.integers(DROP_EVERY) == 0:
            h, w = alpha.shape
            y0, x0 = int(self.rng.integers(0, h // 2)), int(self.rng.integers(0, w // 2))
            alpha[y0:y0 + h // 3, x0:x0 + w // 3] = 0
            alpha[self.rng.random(alpha.shape) < 0.05] = 0
        rgb = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.concatenate([rgb, alpha[..., None]], axis=-1))


class Imu:
    """Acceleration from the camera disc's path (plus gravity) and a slow yaw rate, with sensor noise."""

    def __init__(self, rng: np.random.Generator, camera: Camera, rate_ratio: float) -> None:
        self.rng = rng
        self.camera = camera
        self.rate_ratio = rate_ratio  # IMU samples per camera frame

    def sample(self, k: int) -> np.ndarray:
        t = k / self.rate_ratio  # in camera frames
        ay = -0.35 * 0.07 ** 2 * math.sin(0.07 * t)
        ax = -0.35 * 0.11 ** 2 * math.sin(0.11 * t + 1.0)
        clean = np.array([ax * 100, ay * 100, 9.81, 0.0, 0.0, 0.2 * math.sin(0.01 * t)], np.float32)
        return clean + self.rng.normal(0.0, 0.02, IMU_DIM).astype(np.float32)


class DemoSources:
    """Publishes the demo streams to an ingest endpoint from one background thread.

    The thread owns its ZeroMQ socket (created there, as sockets are not thread-safe); `stop()`
    returns within about a second. `sent` counts frames per sensor as the publisher handed them
    to ZeroMQ, so a consumer can compare with the daemon's `received`.
    """

    def __init__(self, endpoint: str, rate_hz: float = 10.0, *, seed: int = 0, prefix: str = "demo") -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self.endpoint = endpoint
        self.rate_hz = rate_hz
        self.seed = seed
        self.prefix = prefix
        self.sent: dict[str, int] = {f"{prefix}.{name}": 0 for name in STREAMS}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"demo-{self.prefix}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop publishing; True when the thread has ended within timeout_s."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def generators(self) -> dict[str, Any]:
        """Per stream, a function of the frame index k that sends frame k with the given publisher."""
        import random

        from sage_plugins.language.grammar import Grammar
        from sage_plugins.language.noise import corrupt
        from sage_plugins.reasoning.sudoku import generate

        ss = np.random.SeedSequence([self.seed, 0x5A6E])
        cam_rng, imu_rng, puzzle_rng = (np.random.default_rng(s) for s in ss.spawn(3))
        text_rng = random.Random(self.seed)
        camera = Camera(cam_rng)
        imu = Imu(imu_rng, camera, STREAMS["imu"][0] / STREAMS["camera"][0])
        grammar = Grammar.load()
        p = self.prefix

        def speech(pub: Any, k: int) -> None:
            cmd = grammar.sample(text_rng)
            pub.text(f"{p}.speech", corrupt(cmd.text, SPEECH_CER, text_rng), meta={"clean": cmd.text})

        def puzzle(pub: Any, k: int) -> None:
            puzzles, solutions = generate(PUZZLE_SIZE, 1, (4, 11), puzzle_rng)
            pub.tensor(f"{p}.puzzle", puzzles[0].astype(np.int32),
                       meta={"solution": solutions[0].reshape(-1).tolist()})

        return {
            "camera": lambda pub, k: pub.tensor(f"{p}.camera", camera.frame(k)),
            "imu": lambda pub, k: pub.tensor(f"{p}.imu", imu.sample(k)),
            "speech": speech,
            "puzzle": puzzle,
        }

    def _run(self) -> None:
        from sage_runtime.client import SensorPublisher

        pub = None
        try:
            send = self.generators()
            # Wait (briefly) for the ingest's subscription so the first frames are not lost; a
            # source with no daemon behind it still runs (its frames go nowhere).
            pub = SensorPublisher(self.endpoint, connect_timeout_s=None)
            pub.wait_connected(0.5)
            periods = {name: 1.0 / (self.rate_hz * factor) for name, (factor, _) in STREAMS.items()}
            now = time.monotonic()
            due = dict.fromkeys(STREAMS, now)
            count = dict.fromkeys(STREAMS, 0)
            while not self._stop.is_set():
                name = min(due, key=due.__getitem__)
                if self._stop.wait(max(0.0, due[name] - time.monotonic())):
                    break
                send[name](pub, count[name])
                count[name] += 1
                self.sent[f"{self.prefix}.{name}"] += 1
                # Behind (CPU starved): resume from now instead of bursting the missed frames.
                due[name] = max(due[name] + periods[name], time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - kept for the owner to see; the daemon goes on
            self.error = exc
            raise
        finally:
            if pub is not None:
                pub.close()
