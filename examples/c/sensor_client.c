/* A minimal C sensor client for sage-runtime (docs/protocol.md), needing only libzmq.
 *
 *   cc -O2 -o sensor_client examples/c/sensor_client.c -lzmq
 *   ./sensor_client [ENDPOINT] [FRAMES]     (default ipc:///run/sage/ingest.sock, 10 frames)
 *
 * Publishes FRAMES 48x64x3 uint8 camera frames as sensor "c_cam". The socket is an XPUB, not a
 * PUB: it waits for the daemon's subscription (one message, 0x01) before sending, so the first
 * frames are not lost to ZeroMQ's slow-joiner. The msgpack header is written by hand (no library):
 * a map of 7 keys with seq and ts_ns as uint64 (0xcf), which is what "integer" means on the wire.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define H 48
#define W 64
#define C 3

static size_t put_str(uint8_t *p, const char *s) {          /* fixstr, up to 31 bytes */
    size_t n = strlen(s);
    p[0] = (uint8_t)(0xa0 | n);
    memcpy(p + 1, s, n);
    return n + 1;
}

static size_t put_u64(uint8_t *p, uint64_t v) {             /* uint 64, big-endian */
    p[0] = 0xcf;
    for (int i = 0; i < 8; i++) p[1 + i] = (uint8_t)(v >> (56 - 8 * i));
    return 9;
}

static size_t put_uint(uint8_t *p, unsigned v) {            /* positive fixint or uint 16 */
    if (v < 128) { p[0] = (uint8_t)v; return 1; }
    p[0] = 0xcd; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)v;
    return 3;
}

static size_t header(uint8_t *p, const char *sensor, uint64_t seq, uint64_t ts_ns) {
    size_t n = 0;
    p[n++] = 0x87;                                           /* fixmap, 7 entries */
    n += put_str(p + n, "v");      p[n++] = 1;
    n += put_str(p + n, "sensor"); n += put_str(p + n, sensor);
    n += put_str(p + n, "seq");    n += put_u64(p + n, seq);
    n += put_str(p + n, "ts_ns");  n += put_u64(p + n, ts_ns);
    n += put_str(p + n, "kind");   n += put_str(p + n, "tensor");
    n += put_str(p + n, "dtype");  n += put_str(p + n, "uint8");
    n += put_str(p + n, "shape");
    p[n++] = 0x93;                                           /* fixarray, 3 */
    n += put_uint(p + n, H); n += put_uint(p + n, W); n += put_uint(p + n, C);
    return n;
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : "ipc:///run/sage/ingest.sock";
    int frames = argc > 2 ? atoi(argv[2]) : 10;
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_XPUB);
    /* linger: time to hand over what the daemon's receive queue (capacity.rcvhwm) pushed back */
    int linger = 5000, timeout = 5000;
    zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(pub, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    if (zmq_connect(pub, endpoint) != 0) { fprintf(stderr, "connect %s: %s\n", endpoint, zmq_strerror(zmq_errno())); return 1; }
    uint8_t sub[256];
    int got = zmq_recv(pub, sub, sizeof sub, 0);             /* the daemon's subscription */
    if (got < 1 || sub[0] != 1) { fprintf(stderr, "no sage-runtime subscribed on %s within 5 s\n", endpoint); return 3; }

    static uint8_t pixels[H * W * C];
    uint8_t hdr[128];
    for (int i = 0; i < frames; i++) {
        for (size_t k = 0; k < sizeof pixels; k++) pixels[k] = (uint8_t)(k + i);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ts_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        size_t hlen = header(hdr, "c_cam", (uint64_t)i, ts_ns);
        zmq_send(pub, "sensor/c_cam", 12, ZMQ_SNDMORE);
        zmq_send(pub, hdr, hlen, ZMQ_SNDMORE);
        zmq_send(pub, pixels, sizeof pixels, 0);
    }
    printf("sent %d frames as c_cam\n", frames);
    zmq_close(pub);
    zmq_ctx_term(ctx);
    return 0;
}
