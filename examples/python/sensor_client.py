"""A minimal Python sensor client (docs/protocol.md): publishes camera frames, IMU samples and a
text command with the SDK, then prints the first result the daemon publishes.

    python examples/python/sensor_client.py [--ingest ipc:///run/sage/ingest.sock] [--frames 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sage_runtime.client import ResultSubscriber, SensorPublisher


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ingest", help="ingest endpoint (default: the local daemon's ipc socket)")
    p.add_argument("--results", help="results endpoint (default: the local daemon's ipc socket)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--rate-hz", type=float, default=20.0)
    args = p.parse_args()

    sub = ResultSubscriber(args.results, topics=("result/",))
    pub = SensorPublisher(args.ingest)  # returns once the daemon has subscribed: nothing is lost
    rng = np.random.default_rng(0)
    for i in range(args.frames):
        pub.tensor("example_cam", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        pub.tensor("example_imu", rng.standard_normal(6).astype(np.float32))
        if i == 0:
            pub.text("example_speech", "go to the dock")
        time.sleep(1.0 / args.rate_hz)
    msg = sub.recv(timeout_s=5.0)
    if msg is None:
        print("sent", args.frames, "frames per sensor; no result within 5 s (no plugin enabled?)")
    else:
        print("sent", args.frames, "frames per sensor; first result from", msg.header["plugin"],
              "inputs", msg.header["inputs"])
    pub.close()
    sub.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
