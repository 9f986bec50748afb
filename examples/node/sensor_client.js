// A minimal Node.js sensor client for sage-runtime (docs/protocol.md).
//
//   cd examples/node && npm install          (zeromq 6, @msgpack/msgpack 3)
//   node sensor_client.js [ENDPOINT] [FRAMES]   (default ipc:///run/sage/ingest.sock, 10 frames)
//
// Publishes FRAMES 6-float IMU samples as sensor "js_imu" and one text command. Two things a
// JavaScript client must get right:
// - seq and ts_ns are 64-bit integers on the wire: use BigInt and encode with useBigInt64, or
//   msgpack writes a float64 and the daemon rejects the frame (`key_type`).
// - An XPublisher, not a Publisher: wait for the daemon's subscription before sending, or the
//   first frames are dropped (ZeroMQ's slow joiner).
"use strict";
const zmq = require("zeromq");
const { encode } = require("@msgpack/msgpack");

async function main() {
  const endpoint = process.argv[2] || "ipc:///run/sage/ingest.sock";
  const frames = Number(process.argv[3] || 10);
  const pub = new zmq.XPublisher({ linger: 5000, receiveTimeout: 5000 });  // linger: what the daemon pushed back still goes
  pub.connect(endpoint);
  try {
    const [subscription] = await pub.receive(); // 0x01 + topic: the daemon's ingest subscribed
    if (subscription[0] !== 1) throw new Error("unexpected message");
  } catch (err) {
    console.error(`no sage-runtime subscribed on ${endpoint} within 5 s`);
    process.exit(3);
  }
  const header = (sensor, seq, kind, extra) => encode({
    v: 1, sensor, seq: BigInt(seq), ts_ns: BigInt(Date.now()) * 1000000n, kind, ...extra,
  }, { useBigInt64: true });
  for (let i = 0; i < frames; i++) {
    const sample = new Float32Array([0, 0, 9.81, 0.01 * i, 0, 0]); // little-endian on every Node platform
    await pub.send(["sensor/js_imu", header("js_imu", i, "tensor", { dtype: "float32", shape: [6] }),
                    Buffer.from(sample.buffer)]);
  }
  await pub.send(["sensor/js_speech", header("js_speech", 0, "text", {}), Buffer.from("go to the dock", "utf8")]);
  console.log(`sent ${frames} frames as js_imu and 1 as js_speech`);
  pub.close();
}

main();
