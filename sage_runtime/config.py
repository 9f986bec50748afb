"""The whole configuration as one pydantic model, validated in one place.

Layers, later wins: the embedded default (`configs/default.yaml`, shipped in the package), the file
given with `--config`, then `SAGE_<SECTION>__<KEY>=value` environment variables (values parsed as
YAML scalars). Any error names the offending key; the daemon exits 2 on it.
"""

from __future__ import annotations

import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sage_runtime.cognition.atp import AtpParams
from sage_runtime.cognition.metabolic import MetabolicParams
from sage_runtime.cognition.salience import SalienceParams
from sage_runtime.telemetry import TelemetryParams
from sage_runtime.cognition.trust import TrustParams
from sage_runtime.errors import ConfigError

ENV_PREFIX = "SAGE_"
_POLICY_RE = re.compile(r"latest|fifo:([1-9][0-9]{0,5})\Z")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeSection(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(1, ge=1, le=64)
    runtime_dir: str | None = None
    state_dir: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    uvloop: bool = True


class TickSection(Section):
    rate_hz: float = Field(100.0, gt=0, le=1000)
    #: Run a tick as soon as a frame arrives (bounded by max_rate_hz) instead of waiting for the period.
    wake_on_input: bool = True
    max_rate_hz: float = Field(1000.0, gt=0, le=10000)
    #: Share of the tick period plugins may spend; the rest is ingest, attention and publish.
    plugin_share: float = Field(0.8, gt=0, le=1)
    #: A plugin unit still running this long past its deadline (and 10x its usual time) is abandoned
    #: and counted as hung if it is a runaway or stuck (docs/architecture.md); time its thread
    #: spent waiting for a CPU does not count.
    hang_grace_ms: float = Field(250.0, gt=0)
    #: Deadline misses over this many recent ticks feed the metabolic deadline-miss rate.
    miss_window: int = Field(100, ge=1)
    #: sys.setswitchinterval: how long a plugin thread may hold the GIL while the tick waits for it.
    gil_switch_interval_ms: float = Field(1.0, gt=0, le=100)


def _check_policy(value: str) -> str:
    if not _POLICY_RE.match(value):
        raise ValueError("policy must be 'latest' or 'fifo:N' with N in 1..999999")
    return value


class SensorSection(Section):
    kind: Literal["tensor", "text", "event", "reward"] = "tensor"
    policy: str | None = None
    dtype: str | None = None
    max_shape: list[int] | None = None
    modality: Literal["image", "vector", "text", "event", "reward", "other"] | None = None
    expected_hz: float | None = Field(None, gt=0)

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        return value if value is None else _check_policy(value)


class IngestSection(Section):
    #: ipc only by default: a TCP endpoint, even on 127.0.0.1, lets in every local user (opt-in).
    endpoints: list[str] = ["ipc://{runtime_dir}/ingest.sock"]
    #: One message, all parts together (counted part by part); a single part over twice this makes
    #: libzmq drop the peer (ZMQ_MAXMSGSIZE is per part).
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_elements: int = Field(16 * 1024 * 1024, ge=1)
    allow_undeclared: bool = True
    reject_non_finite: bool = True
    #: Rejections are logged once per sensor and reason, then as one count per this interval.
    rejection_log_interval_s: float = Field(60.0, gt=0, le=3600)
    default_tensor_policy: str = "latest"
    default_fifo_policy: str = "fifo:64"
    #: Accept tensor frames whose bytes wait in a client's shared-memory ring (docs/protocol.md).
    shm: bool = True
    #: Filled from capacity.max_sensors (one number for ingest, salience and the mailbox).
    max_sensors: int = Field(64, ge=1)
    sensors: dict[str, SensorSection] = {}

    @field_validator("default_tensor_policy", "default_fifo_policy")
    @classmethod
    def _policies(cls, value: str) -> str:
        return _check_policy(value)


class ResultsSection(Section):
    endpoints: list[str] = ["ipc://{runtime_dir}/results.sock"]
    #: A subscriber that never reads costs at most this many queued messages, then drops.
    sndhwm: int = Field(64, ge=1)


class ControlSection(Section):
    endpoint: str = "ipc://{runtime_dir}/control.sock"
    socket_mode: int = Field(0o660, ge=0, le=0o777)
    #: An extra TCP control endpoint for remote tools; allowed only with CurveZMQ keys (security).
    tcp_endpoint: str | None = None


class JobSection(Section):
    """One plugin's jobs. input_policy: what new input does to a running job (`queue` finishes it
    first, `restart` drops it for the newest input, `warm` starts the next job from its state);
    unset: the plugin's own default. max_age_ms: the job's deadline, as the maximum age of its
    oldest frame (unset: plugins.max_age_ms). max_atp: cap on one job's spend (halt `quota`)."""

    input_policy: Literal["queue", "restart", "warm"] | None = None
    max_age_ms: float | None = Field(None, gt=0)
    max_atp: float | None = Field(None, gt=0)
    #: Where the plugin's code runs (unset: plugins.isolation).
    isolation: Literal["auto", "thread", "process"] | None = None


class PluginsSection(Section):
    #: Plugin names (entry points of `sage_runtime.plugins`) or `module:Class` import paths.
    enabled: list[str] = []
    #: Per-plugin options, by name, handed to the plugin's setup().
    options: dict[str, dict[str, Any]] = {}
    #: Which sensors each plugin reads, by plugin name (e.g. `vision: [front_cam]`). A plugin not
    #: listed reads every sensor whose frames it accepts.
    inputs: dict[str, list[str]] = {}
    breaker_failures: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(10.0, gt=0)
    #: Refinement jobs (docs/metabolic.md, "Jobs"): defaults for every plugin, then per plugin by name.
    max_age_ms: float = Field(250.0, gt=0)
    jobs: dict[str, JobSection] = {}
    #: How far below the tick plugin threads run (per-thread nice, 0..19).
    thread_nice: int = Field(10, ge=0, le=19)
    #: Where plugin code runs: a thread of the daemon, or a worker process per plugin (its own
    #: GIL, killable when hung); `auto`: a process on a CPU device, a thread on CUDA (a CUDA
    #: context per process costs memory, and frames would leave the device). docs/architecture.md,
    #: "Isolation". Per plugin: jobs.<name>.isolation.
    isolation: Literal["auto", "thread", "process"] = "auto"


class AttentionSection(Section):
    """The attention modules the tick runs (docs/attention.md)."""

    #: Fusion's query: what the robot is doing. Also the expert-trust context of the selector.
    goal: str = "default"
    #: Width of the fused context vector handed to plugins and the selector.
    fusion_dim: int = Field(256, ge=16, le=4096)
    #: Selector: 0 ranks plugins by the router alone, 1 by their trust in this state alone.
    selector_alpha: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    #: `attention` (the state-driven allocator) or `uniform`: equal shares, a measured baseline
    #: for benchmarks, not a mode for production.
    allocator: Literal["attention", "uniform"] = "attention"


class CognitionSection(Section):
    #: A frame at or above this SNARC total resets the idle clock that leads to DREAM.
    idle_salience: float = Field(0.1, ge=0, le=1)
    #: Plugin error rate for the state machine is counted over this many recent seconds.
    error_window_s: float = Field(10.0, gt=0)
    #: The trust ledger is saved (atomically) this often, and at shutdown.
    trust_save_interval_s: float = Field(30.0, gt=0)
    #: A plugin that has wanted to run this long without being scheduled ranks ahead of the
    #: selector's picks (longest wait first), so with few active slots it is delayed, not starved.
    max_wait_s: float = Field(1.0, gt=0)
    #: While the reservoir is at least this full, ATP is going unspent (it spills at capacity), so
    #: the state's max_active_plugins does not idle a plugin that wants work (outside CRISIS, which
    #: serves its target alone). null: the limit always applies.
    abundant_fraction: float | None = Field(0.9, gt=0, le=1)
    #: Most of a tick's online budget that goes, first, to the next step of plugins answering
    #: requests (answers_requests: language, reasoning); the allocator splits the rest. 0: none.
    request_share: float = Field(0.5, ge=0, le=1)


class SecuritySection(Section):
    """CurveZMQ for TCP endpoints (docs/operations.md). Both keys or neither; read at start only."""

    #: The daemon's certificate with its secret key (zmq.auth format); refused when world-readable.
    curve_secret_key: str | None = None
    #: Directory of authorised client public keys (`*.key`); only their holders get in.
    authorized_keys_dir: str | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> "SecuritySection":
        if (self.curve_secret_key is None) != (self.authorized_keys_dir is None):
            raise ValueError("curve_secret_key and authorized_keys_dir are set together or not at all")
        return self


MIB = 1024 * 1024
#: Slots a sensor channel allocates: `latest` keeps 4 (ingest.LATEST_DEPTH), `fifo:N` N queued + N leased.
LATEST_SLOTS = 4


def channel_slots(policy: str) -> int:
    return LATEST_SLOTS if policy == "latest" else 2 * int(policy.split(":", 1)[1])


class CapacitySection(Section):
    """One capacity model: every bound a client can push against (docs/config.md, "capacity").

    Checked here at load so a config that could outgrow its budget never starts; enforced at run time
    by ingest (refusals counted by reason in `sagectl status`), health `degraded` past `warn_share`."""

    #: Sensors the daemon tracks: ingest registrations, salience slots and mailbox channels alike.
    max_sensors: int = Field(64, ge=1, le=4096)
    #: All sensor channels and queued text/event frames together (preallocated slots count in full).
    mailbox_bytes: int = Field(512 * MIB, ge=MIB)
    #: One sensor: its channel's slots (depth x frame size), or its queued text/event frames.
    sensor_bytes: int = Field(128 * MIB, ge=64 * 1024)
    #: Parts of one ingest message (3 are used) or control request (1-2 + envelope); counted part by part.
    max_message_parts: int = Field(8, ge=3, le=64)
    #: Event `type`/`target`/`priority` and reward `target` strings: status and the ledgers keep them.
    max_string_bytes: int = Field(256, ge=16, le=65536)
    #: A byte bound on what libzmq may queue per peer before the daemon reads a part: rcvhwm whole
    #: messages of up to ingest.max_message_bytes. Unset (default): no byte bound, libzmq's own
    #: 1,000-message queue, because a SUB past its mark drops and a small queue loses bursts.
    receive_bytes: int | None = Field(None, ge=MIB)
    #: ZMQ_RCVHWM of the ingest and control sockets, in messages per peer; unset: receive_bytes //
    #: ingest.max_message_bytes when receive_bytes is set, else DEFAULT_RCVHWM; at most 100,000.
    rcvhwm: int | None = Field(None, ge=1, le=100_000)
    #: One control request, all parts together (ZMQ_MAXMSGSIZE of the control sockets: a single part
    #: over it makes libzmq drop the peer before allocating it).
    max_request_bytes: int = Field(64 * 1024, ge=4096, le=16 * MIB)
    #: One text frame's payload: decoding UTF-8 runs on the event loop (~25 ms per 30 MiB of non-ASCII
    #: text on a loaded 2-core box), so longer ones are refused (`too_long`) before any decoding.
    max_text_bytes: int = Field(4 * MIB, ge=1024, le=1024 * MIB)
    #: Concurrent peers per TCP endpoint (ZAP refuses more); ipc endpoints are guarded by file modes.
    max_tcp_peers: int = Field(64, ge=1, le=4096)
    #: Health turns `degraded` when a budget is this full.
    warn_share: float = Field(0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _sensor_within_total(self) -> "CapacitySection":
        if self.sensor_bytes > self.mailbox_bytes:
            raise ValueError(f"sensor_bytes {self.sensor_bytes} exceeds mailbox_bytes {self.mailbox_bytes}")
        return self


def _itemsize(dtype: str | None) -> int:
    """Bytes per element of a wire dtype; 1 when undeclared (the frame's own dtype is checked at run time)."""
    digits = "".join(c for c in (dtype or "") if c.isdigit())
    return max(int(digits) // 8, 1) if digits else 1


#: libzmq's default ZMQ_RCVHWM: the queue depth when capacity sets no byte bound.
DEFAULT_RCVHWM = 1000


def receive_hwm(cap: CapacitySection, max_message_bytes: int) -> int:
    """ZMQ_RCVHWM of a socket whose messages are up to max_message_bytes: capacity.rcvhwm, or what
    receive_bytes allows when it is set; never more than receive_bytes holds."""
    if cap.receive_bytes is None:
        return cap.rcvhwm or DEFAULT_RCVHWM
    fits = max(1, min(cap.receive_bytes // max_message_bytes, 100_000))
    return fits if cap.rcvhwm is None else min(cap.rcvhwm, fits)


def check_capacity(cfg: "SageConfig") -> None:
    """Every declared sensor and the default policies fit the per-sensor budget, and libzmq's receive
    queue fits receive_bytes (ValueError naming the keys)."""
    cap, ing = cfg.capacity, cfg.ingest
    queued = (cap.rcvhwm or 1) * ing.max_message_bytes
    if cap.receive_bytes is not None and queued > cap.receive_bytes:
        what = (f"capacity.rcvhwm {cap.rcvhwm} x ingest.max_message_bytes {ing.max_message_bytes} = {queued} bytes"
                if cap.rcvhwm else f"ingest.max_message_bytes {queued} (one message; capacity.rcvhwm unset)")
        raise ValueError(f"{what} libzmq may queue per peer exceeds capacity.receive_bytes {cap.receive_bytes}")
    budget = cap.sensor_bytes
    frame = ing.max_message_bytes
    worst = channel_slots(ing.default_tensor_policy) * frame
    if ing.allow_undeclared and worst > budget:
        raise ValueError(f"ingest.default_tensor_policy {ing.default_tensor_policy!r} x max_message_bytes {frame} "
                         f"= {worst} bytes exceeds capacity.sensor_bytes {budget}")
    for name, sensor in ing.sensors.items():
        default = ing.default_tensor_policy if sensor.kind == "tensor" else ing.default_fifo_policy
        policy = sensor.policy or default
        if sensor.kind != "tensor" or not sensor.max_shape:
            continue  # queues, and channels sized by their first frame, are checked at registration
        numel = 1
        for d in sensor.max_shape:
            numel *= d
        frame_bytes = min(numel * _itemsize(sensor.dtype), frame)
        need = channel_slots(policy) * frame_bytes
        if need > budget:
            raise ValueError(f"ingest.sensors.{name}: policy {policy} x frame {frame_bytes} bytes = {need} bytes "
                             f"exceeds capacity.sensor_bytes {budget}")


class DemoSection(Section):
    rate_hz: float = Field(10.0, gt=0, le=1000)


def _default_robot_id() -> str:
    """The hostname, cut to what a key-expression chunk and a ROS 2 name can hold."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "robot"
    return name if not name[0].isdigit() else f"r{name}"


class ZenohSection(Section):
    """The fleet bridge over Eclipse Zenoh (needs the `zenoh` extra; docs/operations.md). Read at start only."""

    enabled: bool = False
    #: This robot's name on the fleet: `sage/<robot_id>/...`; letters, digits, `_` (a ROS 2 name token).
    robot_id: str = Field(default_factory=_default_robot_id, pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    mode: Literal["peer", "client"] = "peer"
    #: Zenoh locators, e.g. `tcp/127.0.0.1:7447`, `tls/fleet.example:7447`.
    listen: list[str] = []
    connect: list[str] = []
    #: Multicast scouting finds peers on the LAN by itself; off so a robot only talks to what it is told.
    multicast_scouting: bool = False
    #: A silent peer is dropped after this long (liveliness tokens go with it).
    lease_ms: int = Field(2000, ge=500, le=60000)
    #: Passed through to Zenoh as `transport/link/tls` and `access_control` (Zenoh's own schemas).
    tls: dict[str, Any] | None = None
    access_control: dict[str, Any] | None = None
    #: Serve state-changing control commands (pause, resume, state, reload) as queryables; refused
    #: at start unless `tls` or `access_control` is configured.
    write_commands: bool = False
    #: Also publish results and state the way rmw_zenoh maps ROS 2 topics (docs/protocol.md).
    ros2: bool = True
    ros2_domain_id: int = Field(0, ge=0, le=232)
    status_interval_s: float = Field(1.0, gt=0, le=60)
    #: Frames from Zenoh waiting for the event loop; past this they are dropped and counted.
    max_pending: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _write_needs_protection(self) -> "ZenohSection":
        if not self.write_commands:
            return self
        acl = bool(self.access_control and self.access_control.get("enabled"))
        if not (self.tls or acl):
            raise ValueError("write_commands needs zenoh.tls or zenoh.access_control (enabled): without them "
                             "any peer on the network could steer this robot")
        plain = [ep for ep in self.listen + self.connect if not ep.startswith(("tls/", "quic/"))]
        if not acl and plain:
            raise ValueError(f"write_commands with zenoh.tls alone needs tls/ or quic/ endpoints; "
                             f"{', '.join(plain)} would take commands in the clear")
        return self
def _listen(value: str | None, module: str, extra: str) -> str | None:
    """A `HOST:PORT` to serve on, checked to be one, with the optional extra that serves it installed."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"this needs the `{extra}` extra: pip install 'sage-runtime[{extra}]'")
    return value


class MetricsSection(Section):
    """Prometheus `/metrics` over HTTP (the `metrics` extra); read at start only."""

    #: "HOST:PORT" to serve on, e.g. "127.0.0.1:9464"; unset serves nothing.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        return _listen(value, "prometheus_client", "metrics")


class FoxgloveSection(Section):
    """Foxglove live view over WebSocket (the `foxglove` extra); read at start only."""

    #: "HOST:PORT" to serve on, e.g. "127.0.0.1:8765"; unset serves nothing.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        return _listen(value, "foxglove", "foxglove")


class ReplaySection(Section):
    """The cost model of a deterministic replay (`sage-runtime --replay IN.mcap --deterministic`):
    fixed virtual costs instead of measured CPU time, so scheduling does not depend on the
    machine's load (docs/operations.md, "Deterministic replay")."""

    #: Virtual ms one refinement step (and one job start) costs, unless the plugin declares
    #: `step_cost_ms` or `step_ms` below names it.
    default_step_ms: float = Field(2.0, gt=0, le=10000)
    #: Per-plugin step cost in virtual ms, by plugin name.
    step_ms: dict[str, float] = {}
    #: The core count the plugins' per-tick budget is sized for (the live daemon reads the machine's).
    cores: int = Field(2, ge=1, le=1024)
    #: After the recording ends, ticks go on (virtual seconds) until the plugins are idle, at most this long.
    tail_s: float = Field(2.0, ge=0, le=600)


class SageConfig(Section):
    runtime: RuntimeSection = RuntimeSection()
    tick: TickSection = TickSection()
    ingest: IngestSection = IngestSection()
    results: ResultsSection = ResultsSection()
    control: ControlSection = ControlSection()
    plugins: PluginsSection = PluginsSection()
    demo: DemoSection = DemoSection()
    security: SecuritySection = SecuritySection()
    metabolic: MetabolicParams = MetabolicParams()
    atp: AtpParams = AtpParams()
    salience: SalienceParams = SalienceParams()
    trust: TrustParams = TrustParams()
    telemetry: TelemetryParams = TelemetryParams()
    attention: AttentionSection = AttentionSection()
    cognition: CognitionSection = CognitionSection()
    metrics: MetricsSection = MetricsSection()
    foxglove: FoxgloveSection = FoxgloveSection()
    capacity: CapacitySection = CapacitySection()
    zenoh: ZenohSection = ZenohSection()
    replay: ReplaySection = ReplaySection()

    @model_validator(mode="before")
    @classmethod
    def _one_max_sensors(cls, data: Any) -> Any:
        """capacity.max_sensors is the one number: ingest and salience take it, never their own."""
        if not isinstance(data, dict):
            return data
        cap = data.get("capacity") or {}
        n = cap.get("max_sensors", CapacitySection.model_fields["max_sensors"].default) \
            if isinstance(cap, dict) else None
        out = dict(data)
        for section in ("ingest", "salience"):
            raw = out.get(section)
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                continue
            if "max_sensors" in raw and raw["max_sensors"] != n:
                raise ValueError(f"{section}.max_sensors is capacity.max_sensors (one number for ingest, salience "
                                 f"and the mailbox): set that instead")
            out[section] = {**raw, "max_sensors": n}
        if isinstance(out.get("ingest"), dict) and "rcvhwm" in out["ingest"]:
            raise ValueError("ingest.rcvhwm is capacity.rcvhwm (bounded by capacity.receive_bytes): set that instead")
        return out

    @model_validator(mode="after")
    def _within_capacity(self) -> "SageConfig":
        check_capacity(self)
        return self


#: Sections (or "section.key") a SIGHUP reload applies without a restart.
LIVE_KEYS = frozenset({
    "tick.rate_hz", "tick.plugin_share", "tick.hang_grace_ms", "tick.wake_on_input", "tick.max_rate_hz",
    "runtime.log_level", "ingest.reject_non_finite", "ingest.allow_undeclared", "plugins.breaker_failures",
    "plugins.breaker_cooldown_s", "demo",
})


def default_config_text() -> str:
    return resources.files("sage_runtime").joinpath("configs/default.yaml").read_text(encoding="utf-8")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """SAGE_TICK__RATE_HZ=50 -> {"tick": {"rate_hz": 50}}. Single-underscore SAGE_* names are not config."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not a valid YAML value ({exc.problem})") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping")
    return data


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] in ("extra_forbidden", "unexpected_keyword_argument") \
            else err["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return f"invalid configuration ({origin}):\n  " + "\n  ".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> SageConfig:
    """Embedded default, overlaid by the file at `path`, overlaid by SAGE_* variables."""
    data = _read_yaml(default_config_text(), "embedded default")
    origin = "embedded default"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        data = _merge(data, _read_yaml(text, str(path)))
        origin = str(path)
    env = _env_overrides(dict(os.environ if environ is None else environ))
    if env:
        data = _merge(data, env)
        origin += " + SAGE_* environment"
    try:
        return SageConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def changed_keys(old: SageConfig, new: SageConfig) -> list[str]:
    """Dotted keys whose values differ (section.key granularity)."""
    changed = []
    a, b = old.model_dump(), new.model_dump()
    for section in b:
        if a.get(section) == b[section]:
            continue
        if isinstance(b[section], dict):
            changed += [f"{section}.{k}" for k in b[section] if a[section].get(k) != b[section][k]]
        else:
            changed.append(section)
    return changed


def split_reload(old: SageConfig, new: SageConfig) -> tuple[list[str], list[str]]:
    """(keys applied live, keys that need a restart)."""
    live, restart = [], []
    for key in changed_keys(old, new):
        (live if key in LIVE_KEYS or key.split(".")[0] in LIVE_KEYS else restart).append(key)
    return live, restart


def resolve_runtime_dir(cfg: SageConfig, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if cfg.runtime.runtime_dir:
        return Path(cfg.runtime.runtime_dir)
    for name in ("SAGE_RUNTIME_DIR", "RUNTIME_DIRECTORY"):
        if env.get(name):
            return Path(env[name].split(":")[0])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "sage"
    return Path(f"/tmp/sage-{os.getuid()}")


def resolve_state_dir(cfg: SageConfig, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if cfg.runtime.state_dir:
        return Path(cfg.runtime.state_dir)
    if env.get("SAGE_STATE_DIR"):
        return Path(env["SAGE_STATE_DIR"])
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    return Path.home() / ".local" / "state" / "sage"


def expand_endpoint(endpoint: str, runtime_dir: Path) -> str:
    return endpoint.replace("{runtime_dir}", str(runtime_dir))
