"""What this machine can actually do, probed, as a JSON-able dict for `sagectl status --json`.

Why probe instead of reading flags: an SDPA backend "enabled" in torch.backends may still refuse
the shapes and dtypes we run, a CUDA graph may fail to capture inside a container, and a jtop
socket may exist while its service is dead. Every probe is tiny (microseconds to milliseconds),
runs once at start, and reports a reason instead of raising.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import platform
import resource
import socket
import warnings
from typing import Any

import torch

from sage_runtime.telemetry import JTOP_SOCKET

_CAP_SYS_NICE = 23  # linux/capability.h


def capability_report(device: str | torch.device | None = None, *, jtop_socket: str = JTOP_SOCKET,
                      shm_path: str = "/dev/shm", etc_root: str = "/etc") -> dict[str, Any]:
    """Device, SDPA backends that run, CUDA graphs, /dev/shm, real-time privilege, jtop state,
    versions. `device` is the daemon's device ("cpu", "cuda", "cuda:0"); None picks CUDA if present."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return {
        "device": _device(dev),
        "sdpa_backends": sdpa_backends(dev),
        "flash_attn_package": importlib.util.find_spec("flash_attn") is not None,
        "cuda_graphs": cuda_graphs(dev),
        "shm": shm_size(shm_path),
        "realtime": realtime_privilege(),
        "jtop": jtop_state(jtop_socket),
        "versions": _versions(etc_root),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _device(dev: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"type": dev.type, "name": platform.processor() or platform.machine()}
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return {**out, "error": "CUDA requested but torch.cuda.is_available() is False"}
        props = torch.cuda.get_device_properties(dev)
        out.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                   total_memory_bytes=props.total_memory, multiprocessors=props.multi_processor_count,
                   integrated=bool(getattr(props, "is_integrated", False)))
    return out


def sdpa_backends(dev: torch.device) -> dict[str, bool | str]:
    """Each SDPA backend -> True if a small attention call of the daemon's shape runs under it
    alone, else the reason it does not (fp16 on CUDA, fp32 on CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if dev.type == "cuda" and not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    q = torch.randn(1, 4, 8, 64, device=dev, dtype=dtype)
    result: dict[str, bool | str] = {}
    for name, backend in SDPBackend.__members__.items():
        if backend in (SDPBackend.ERROR, SDPBackend.OVERRIDEABLE):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    torch.nn.functional.scaled_dot_product_attention(q, q, q)
                result[name.lower()] = True
            except RuntimeError as exc:
                # On CUDA torch warns why each kernel refused the call; that beats the generic error.
                why = [str(w.message) for w in caught if "sdp" in str(w.message).lower() or "Flash" in str(w.message)]
                result[name.lower()] = _first_line(why[0] if why else exc)
    return result


def cuda_graphs(dev: torch.device) -> dict[str, Any]:
    """Capture and replay a one-op graph: the only reliable answer inside containers."""
    if dev.type != "cuda" or not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA device"}
    try:
        x = torch.zeros(16, device=dev)
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            x.add_(1)  # warm-up outside capture, as torch.cuda.graphs recommends
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            x.add_(1)
        graph.replay()
        torch.cuda.synchronize(dev)
        return {"available": bool(x[0].item() == 2.0), "reason": None}
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here", reported
        return {"available": False, "reason": _first_line(exc)}


def shm_size(path: str = "/dev/shm") -> dict[str, Any]:
    """Docker's default /dev/shm is 64 MiB, too small for the frame path; say so."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"path": path, "total_bytes": None, "free_bytes": None, "error": exc.strerror}
    total = st.f_frsize * st.f_blocks
    return {"path": path, "total_bytes": total, "free_bytes": st.f_frsize * st.f_bavail,
            "small": total < 256 * 1024 * 1024}


def realtime_privilege() -> dict[str, Any]:
    """SCHED_FIFO is allowed with a non-zero RLIMIT_RTPRIO or CAP_SYS_NICE (root has it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    cap = _has_capability(_CAP_SYS_NICE)
    rtprio = None if soft == resource.RLIM_INFINITY else soft
    allowed = cap or soft == resource.RLIM_INFINITY or soft > 0
    return {"allowed": allowed, "rlimit_rtprio": rtprio, "cap_sys_nice": cap,
            "max_fifo_priority": os.sched_get_priority_max(os.SCHED_FIFO),
            "current_policy": _policy_name(os.sched_getscheduler(0))}


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _policy_name(policy: int) -> str:
    names = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE")
             if hasattr(os, n)}
    return names.get(policy, str(policy))


def jtop_state(path: str = JTOP_SOCKET) -> dict[str, Any]:
    """absent / not a socket / permission denied / not answering / answering, plus whether the
    jetson-stats client is installed. Connecting and closing is all; no data is exchanged."""
    installed = importlib.util.find_spec("jtop") is not None
    out: dict[str, Any] = {"socket": path, "client_installed": installed}
    if not os.path.exists(path):
        return {**out, "state": "absent"}
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        return {**out, "state": f"error: {exc.strerror}"}
    try:
        sock.settimeout(0.5)
        sock.connect(path)
        return {**out, "state": "answering"}
    except OSError as exc:
        states = {errno.ECONNREFUSED: "not answering (stale socket)", errno.EACCES: "permission denied (jtop group?)",
                  errno.ENOTSOCK: "not a socket", errno.EPROTOTYPE: "not a stream socket"}
        return {**out, "state": states.get(exc.errno or 0, f"error: {exc.strerror}")}
    finally:
        sock.close()


def l4t_release(etc_root: str = "/etc") -> str | None:
    """'36.4.0' from /etc/nv_tegra_release ('# R36 (release), REVISION: 4.0, ...'); None off Jetson."""
    try:
        with open(os.path.join(etc_root, "nv_tegra_release"), encoding="ascii", errors="replace") as fh:
            head = fh.readline()
    except OSError:
        return None
    try:
        major = head.split("R", 1)[1].split()[0]
        revision = head.split("REVISION:", 1)[1].split(",")[0].strip()
    except IndexError:
        return None
    return f"{major}.{revision}" if major.isdigit() else None


def _versions(etc_root: str) -> dict[str, Any]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "python": platform.python_version(), "kernel": platform.release(), "machine": platform.machine(),
            "l4t": l4t_release(etc_root)}


def _first_line(what: BaseException | str) -> str:
    text = str(what).strip().splitlines()
    return text[0][:200] if text else type(what).__name__
