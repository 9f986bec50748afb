"""A plugin in its own process (`plugins.isolation: process`): `RemotePlugin` stands in for it.

Python code in a plugin's step holds the GIL, so a plugin thread delays the tick however its OS
priority is set (benchmarks/results/tick_gil.json: threads miss the tick bound, processes keep
it). In a worker process the plugin has its own interpreter; its host thread in the daemon only
waits on a pipe, without the GIL. The worker can also be killed: a hung plugin's thread cannot.

`RemotePlugin` has the plugin's interface, so the host and the runner drive it as they drive a
plugin in a thread. Each method call is one request over a pipe, answered by the worker (which
holds the job states: the daemon holds `Handle`s to them). What the tick reads without waiting
(`accepts`, the class attributes, `pending_input`, `pending_consolidation`, `health_reasons`)
comes from a local instance of the class that is never set up, given the plugin's plain
attributes after its setup, and from the hook values sent with every answer. So a plugin run
this way must decide `accepts` from its class and plain attributes (numbers, strings, tuples).

The worker runs `nice` below its host thread, which runs SCHED_FIFO just below the tick when the
tick has it, else at nice 0 (plugin/priority.py): the host thread holds the GIL for a moment per request (unpickling an
answer, the runner's bookkeeping), and a 3x soak with workers at the host thread's priority had
tick p99 of 20-23 ms: host threads holding the GIL lost the CPU to the workers, and the tick
waited for the GIL behind them.

ATP is compute time: `cpu_ns` is the worker's own CPU time, reported with every answer, which
the host uses as its cost clock. A worker that dies (or is killed as hung) fails the unit in
progress with `WorkerDied`; the host then starts a new worker (`respawn`), between units, and
the plugin is set up again (its warm states are gone). Payloads go through pickle: a frame is copied once each way.

Hand-written rather than multiprocessing.Pool / concurrent.futures.ProcessPoolExecutor: those
run stateless calls on any worker, while a plugin's job states must stay in one process whose
thread the hang check can read and that can be killed and replaced.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from sage_runtime.plugin.contract import IRPPlugin, PluginContext
from sage_runtime.plugin.priority import ThreadSchedstat

log = logging.getLogger("sage.plugins")

#: Methods whose result is a job state: it stays in the worker, the daemon gets a Handle.
STATE_METHODS = frozenset({"init_state", "step", "project", "warm_state"})
HOOKS = ("pending_input", "pending_consolidation", "health_reasons")
PLAIN = (bool, int, float, str, bytes, type(None))


class WorkerDied(RuntimeError):
    """The plugin's worker process exited (or was killed) before it answered."""


class Handle:
    """A job state held in the worker (`key`), valid for the worker generation that made it,
    with what the same request computed, so a step is one request, not four: its energy, and
    after a step the plugin's halt for `history` (the job's energies, this state's last)."""

    __slots__ = ("key", "generation", "energy", "projected", "history", "halt", "__weakref__")

    def __init__(self, key: int, generation: int, energy: float | None, projected: bool,
                 history: list[float] | None, halt: dict[str, str | None] | None) -> None:
        self.key, self.generation, self.energy, self.projected = key, generation, energy, projected
        self.history, self.halt = history, halt


@dataclasses.dataclass(frozen=True)
class StateRef:
    """A Handle on the wire: which of the worker's states an argument is."""

    key: int


class _Pickler(pickle.Pickler):
    """CPU tensors as numpy arrays: torch's own reduction goes through torch.save's legacy path,
    9x slower for a camera frame (960 vs 113 us for a 48x64x4 frame and a small tensor, there and
    back), and it showed as 8% of the daemon's GIL time in a 3x soak."""

    def reducer_override(self, obj: Any) -> Any:
        import torch

        if type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad:
            try:
                return _tensor_from_numpy, (obj.numpy(),)
            except TypeError:  # a dtype numpy lacks (bfloat16): torch's own way
                return NotImplemented
        return NotImplemented


def _tensor_from_numpy(array: Any) -> Any:
    import torch

    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _dumps(obj: Any) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=5).dump(obj)
    return out.getvalue()


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


def plain_attributes(plugin: IRPPlugin) -> dict[str, Any]:
    """The plugin's instance attributes the daemon side may read: numbers, strings, tuples of them."""
    return {k: v for k, v in vars(plugin).items() if not k.startswith("__") and _plain(v)}


class RemotePlugin:
    """The daemon's side of a plugin in a worker process (see the module docstring)."""

    def __init__(self, cls: type[IRPPlugin], *, nice: int = 10, torch_threads: int = 1) -> None:
        self._cls, self._nice, self._torch_threads = cls, nice, torch_threads
        self._local = cls()
        self._lock = threading.Lock()  # one request in flight; the tick never takes it
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._ctx: PluginContext | None = None
        self._generation = 0
        self._freed: collections.deque[tuple[int, int]] = collections.deque()  # appended by GC, any thread
        self._hooks: dict[str, Any] = {"pending_input": 0, "pending_consolidation": 0, "health_reasons": []}
        self._cpu_base = 0   # CPU of workers that ended, so cpu_ns never goes back
        self._cpu_now = 0
        self.schedstat: ThreadSchedstat | None = None
        self.restarts = 0
        self.held_states = 0  # job states alive in the worker, as of its last answer (a leak shows here)

    def __getattr__(self, name: str) -> Any:  # class attributes and accepts: the local instance
        local = self.__dict__.get("_local")
        if local is None:
            raise AttributeError(name)
        return getattr(local, name)

    # -------------------------------------------------------------- the worker's lifecycle

    @property
    def worker_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def cpu_ns(self) -> int:
        """The workers' CPU time so far (the host's cost clock)."""
        return self._cpu_base + self._cpu_now

    def _spawn(self) -> None:
        """A fresh interpreter (`python -m sage_runtime.plugin.worker FD`), not a fork (unsafe
        once torch's threads run) nor multiprocessing's spawn (it re-imports the daemon's
        __main__). Started from the host thread, it inherits that thread's scheduling class
        (never the tick's SCHED_FIFO) and lowers itself by `nice`; this process's sys.path goes
        first on the pipe, so it imports what the daemon can."""
        ours, theirs = socket.socketpair()
        with _normal_scheduling():
            proc = subprocess.Popen([sys.executable, "-m", "sage_runtime.plugin.worker", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        conn = multiprocessing.connection.Connection(ours.detach())
        conn.send_bytes(_dumps(list(sys.path)))
        # under a SCHED_FIFO host thread the worker may stay at nice 0: the host never waits
        # behind it for a CPU, and a niced worker loses its core to every other process
        fifo = hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) == os.SCHED_FIFO
        conn.send_bytes(_dumps((self._cls, 0 if fifo else self._nice, self._torch_threads)))
        self._generation += 1
        self._proc, self._conn, self._cpu_now = proc, conn, 0
        self.schedstat = ThreadSchedstat.open(proc.pid, pid=proc.pid)

    def _reap(self, wait_s: float = 1.0) -> None:
        """Forget a worker that ended or died: its CPU joins the base, its states are gone."""
        self._cpu_base += self._cpu_now
        self._cpu_now = 0
        stat, self.schedstat = self.schedstat, None
        if stat is not None:
            stat.close()
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._wait_or_kill(wait_s)
        self._proc = self._conn = None
        self._freed.clear()

    def _exit_status(self) -> str | None:
        """How a worker whose pipe closed ended ("killed by signal 9", "exit code 1"); it may
        take a moment to be reaped after its pipe closed."""
        try:
            code = self._proc.wait(1.0) if self._proc is not None else None
        except subprocess.TimeoutExpired:
            return None
        if code is None:
            return None
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _wait_or_kill(self, timeout_s: float) -> None:
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def kill(self) -> None:
        """SIGKILL the worker (a hung plugin): the unit waiting on it fails with WorkerDied."""
        proc = self._proc
        if proc is not None and proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -------------------------------------------------------------- requests

    def respawn(self) -> None:
        """Start the successor of a worker that died and set its plugin up again. The host calls
        it between units: imports and setup take seconds, which are not a unit's time or cost."""
        with self._lock:
            if self._conn is not None or self._ctx is None:
                return
            self._spawn()
            self.restarts += 1
            self._exchange("setup", (self._ctx,))
            self._cpu_base -= self._cpu_now

    def _request(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._conn is None:
                if method != "setup":
                    raise WorkerDied(f"plugin {self._local.name}: no worker (its setup or restart failed)")
                self._spawn()
            return self._exchange(method, args)

    def _exchange(self, method: str, args: tuple[Any, ...]) -> Any:
        conn, generation = self._conn, self._generation
        assert conn is not None
        for a in args:
            if isinstance(a, Handle) and a.generation != generation:
                raise WorkerDied(f"plugin {self._local.name}: its worker restarted; the job's state is gone")
        freed = []
        while self._freed:
            g, key = self._freed.popleft()
            if g == generation:
                freed.append(key)
        wire_args = tuple(StateRef(a.key) if isinstance(a, Handle) else a for a in args)
        try:
            conn.send_bytes(_dumps((method, wire_args, freed)))
            ok, value, cpu, hooks, self.held_states = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError) as exc:
            how = self._exit_status() or str(exc)
            self._reap()
            raise WorkerDied(f"plugin {self._local.name}: worker exited ({how})") from None
        self._cpu_now, self._hooks = cpu, hooks
        if not ok:
            raise value
        if method in STATE_METHODS and value is not None:
            key, energy, halt = value
            history = self._history_after(method, args, energy)
            handle = Handle(key, generation, energy, method in ("step", "project"), history, halt)
            weakref.finalize(handle, self._freed.append, (generation, key))  # the deque, never rebound
            return handle
        return value

    @staticmethod
    def _history_after(method: str, args: tuple[Any, ...], energy: float | None) -> list[float] | None:
        """The job's energies ending with this new state's, where known: a job's first state
        starts them; a step extends its input's."""
        if energy is None:
            return None
        if method in ("init_state", "warm_state"):
            return [energy]
        before = args[1] if method == "step" and len(args) > 1 else None
        return [*before, energy] if before is not None else None

    # -------------------------------------------------------------- the plugin's interface

    def setup(self, ctx: PluginContext) -> None:
        self._ctx = None  # a failed setup is not retried by the next call
        attrs = self._request("setup", ctx)
        self._ctx = ctx
        for key, value in attrs.items():
            setattr(self._local, key, value)

    def warmup(self) -> None:
        self._request("warmup")

    def sample_inputs(self, seed: int) -> Any:
        return self._request("sample_inputs", seed)

    def init_state(self, inputs: Any) -> Any:
        return self._request("init_state", inputs)

    def warm_state(self, previous: Any, inputs: Any) -> Any:
        return self._request("warm_state", previous, inputs)

    def step(self, state: Any) -> Any:
        """The step, the plugin's project of it, its energy and the plugin's halt after it, in
        one request (the runner always projects, then asks energy, then halt with the job's
        energies: the history the input state carries, plus the new energy)."""
        history = state.history if isinstance(state, Handle) else None
        return self._request("step", state, history)

    def project(self, state: Any) -> Any:
        return state if isinstance(state, Handle) and state.projected else self._request("project", state)

    def energy(self, state: Any) -> float:
        if isinstance(state, Handle) and state.energy is not None:
            return state.energy
        return self._request("energy", state)

    def halt(self, state: Any, history: Any) -> str | None:
        if isinstance(state, Handle) and state.halt is not None and list(history) == state.history:
            return state.halt["reason"]  # computed with the step, for this very history
        return self._request("halt", state, list(history))

    def outputs(self, state: Any) -> dict[str, Any]:
        return self._request("outputs", state)

    def consolidate(self, budget_ms: float) -> dict[str, Any]:
        return self._request("consolidate", budget_ms)

    def pending_input(self) -> int:
        return int(self._hooks["pending_input"])

    def pending_consolidation(self) -> int:
        return int(self._hooks["pending_consolidation"])

    def health_reasons(self) -> list[str]:
        return list(self._hooks["health_reasons"])

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._exchange("close", ())
            finally:
                if self._conn is not None:  # (a worker that died in `close` is reaped already)
                    self._reap(wait_s=2.0)


@contextlib.contextmanager
def _normal_scheduling() -> Iterator[None]:
    """SCHED_OTHER for the calling thread while it starts a worker: a child inherits the
    starting thread's policy, and a host thread may run SCHED_FIFO (plugin/priority.py)."""
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    if policy is None or policy == os.SCHED_OTHER:
        yield
        return
    param = os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


# ------------------------------------------------------------------ the worker process

def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the daemon dies, even mid-step (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(1)


def main() -> None:
    """`python -m sage_runtime.plugin.worker FD`: FD is the daemon's end of the pipe. It sends
    its sys.path, then the plugin class; then requests, one at a time, until `close` or its end."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when this ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s[worker]: %(message)s")
    conn = multiprocessing.connection.Connection(int(sys.argv[1]))
    try:
        sys.path[:] = pickle.loads(conn.recv_bytes())
        cls, nice, torch_threads = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    if nice > 0:  # below its host thread, always (the module docstring says why)
        os.setpriority(os.PRIO_PROCESS, 0, min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19))
    import torch

    torch.set_num_threads(torch_threads)
    serve(conn, cls())


def serve(conn: multiprocessing.connection.Connection, plugin: IRPPlugin) -> None:
    states: dict[int, Any] = {}
    next_key = 0
    while True:
        try:
            method, args, freed = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        for key in freed:
            states.pop(key, None)
        try:
            value, ok = _answer(plugin, method, tuple(states[a.key] if isinstance(a, StateRef) else a for a in args)), True
            if method in STATE_METHODS and value is not None:
                energy = _energy_or_none(plugin, value)
                halt = _halt_or_none(plugin, value, args[1], energy) if method == "step" else None
                states[next_key], value = value, (next_key, energy, halt)
                next_key += 1
        except Exception as exc:  # noqa: BLE001 - handed to the daemon, which isolates it
            value, ok = _picklable(exc), False
        try:
            conn.send_bytes(_dumps((ok, value, time.thread_time_ns(), _hooks(plugin), len(states))))
        except (EOFError, OSError):
            return
        if method == "close":
            return


def _energy_or_none(plugin: IRPPlugin, state: Any) -> float | None:
    """A new state's energy, sent with it; None when it raises (the daemon's energy() call then
    asks, and gets the exception in the unit that asked)."""
    try:
        return float(plugin.energy(state))
    except Exception:  # noqa: BLE001 - raised again where the runner asks
        return None


def _halt_or_none(plugin: IRPPlugin, state: Any, history: list[float] | None,
                  energy: float | None) -> dict[str, str | None] | None:
    """The plugin's halt after a step ({"reason": ...}) for the history the daemon will ask it
    with; None when unknown or when it raises (the daemon then asks, and gets the exception)."""
    if history is None or energy is None:
        return None
    try:
        return {"reason": plugin.halt(state, [*history, energy])}
    except Exception:  # noqa: BLE001 - raised again where the runner asks
        return None


def _answer(plugin: IRPPlugin, method: str, args: tuple[Any, ...]) -> Any:
    if method == "step":
        return plugin.project(plugin.step(args[0]))
    if method == "setup":
        plugin.setup(*args)
        return plain_attributes(plugin)
    if method == "warm_state":
        warm = getattr(plugin, "warm_state", None)
        return warm(*args) if warm is not None else None
    return getattr(plugin, method)(*args)


def _hooks(plugin: IRPPlugin) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for hook in HOOKS:
        try:
            out[hook] = getattr(plugin, hook)()
        except Exception as exc:  # noqa: BLE001 - a faulty hook counts as nothing pending
            out[hook] = [f"{hook}() failed: {type(exc).__name__}: {exc}"] if hook == "health_reasons" else 0
    return out


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that does not survive pickling
        return RuntimeError(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":  # run as the package's module, so its classes are the ones pickled
    from sage_runtime.plugin import worker

    worker.main()
