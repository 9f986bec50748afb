"""Every file and command the Dockerfiles, the systemd unit and the install script reference
exists in the repo or the installed package (the research Dockerfiles ran files that did not
exist), the unit passes `systemd-analyze verify`, and the board configs are valid."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from sage_runtime import cli, daemon, sagectl
from sage_runtime.config import SageConfig, load_config
from sage_runtime.telemetry import TelemetryParams

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker/Dockerfile", REPO / "docker/Dockerfile.l4t"]
UNIT = REPO / "systemd/sage-runtime.service"
SRC_IN_IMAGE = "/opt/sage-runtime/src/"


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


# --------------------------------------------------------------------------- Dockerfiles


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, out = "", []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out[name] = value.strip('"')
    return out


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches too."""
    excluded = False
    parts = rel.split("/")
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def command_of(word: str, rest: str) -> list[str]:
    """argv of ENTRYPOINT/CMD, or of HEALTHCHECK's CMD after its --options."""
    if word == "HEALTHCHECK":
        rest = re.sub(r"^(--\S+\s+)*CMD\s+", "", rest)
    return yaml.safe_load(rest) if rest.startswith("[") else shlex.split(rest)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_references_exist(dockerfile):
    steps = instructions(dockerfile)
    args = arg_defaults(steps)
    installed: set[str] = set()
    for word, rest in steps:
        if word in ("COPY", "ADD"):
            assert "--from" not in rest
            *sources, _ = shlex.split(rest)
            for src in sources:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
        if word == "RUN":
            run = expand(rest, args)
            for rel in re.findall(re.escape(SRC_IN_IMAGE) + r"([\w./-]+)", run):
                if rel.rstrip("/") in ("", "src"):
                    continue
                assert (REPO / rel).exists(), f"{dockerfile.name}: RUN uses {rel}, not in the repo"
                assert not dockerignore_excludes(rel), f"{dockerfile.name}: {rel} is cut by .dockerignore"
            installed |= set(re.findall(r"(/(?:usr/local/bin|etc/sage)/[\w.-]+)", run))
    scripts = console_scripts()
    commands = {w: command_of(w, r) for w, r in steps if w in ("ENTRYPOINT", "CMD", "HEALTHCHECK")}
    for word, argv in commands.items():
        exe = argv[0]
        if exe.startswith("-"):
            continue  # CMD holds arguments for the ENTRYPOINT
        assert exe in scripts or f"/usr/local/bin/{exe}" in installed, f"{dockerfile.name}: {word} runs {exe}"
        assert exe not in ("bash", "sh"), "the research images ran a shell, not the daemon"
    assert commands["ENTRYPOINT"] == ["sage-runtime"]
    for path in (a for a in commands.get("CMD", []) if a.startswith("/")):
        assert path in installed, f"{dockerfile.name}: CMD names {path}, which no RUN installs"
    if commands.get("CMD"):
        cli.build_parser().parse_args(commands["CMD"])  # the daemon accepts the CMD arguments


def test_healthcheck_script_runs_real_sagectl_arguments():
    script = (REPO / "docker/healthcheck").read_text()
    assert (REPO / "docker/healthcheck").stat().st_mode & 0o111, "the healthcheck must be executable"
    argv = shlex.split(next(line for line in script.splitlines() if line.startswith("sagectl")).split("||")[0])
    assert argv[0] in console_scripts()
    sagectl.build_parser().parse_args(argv[1:])


def test_l4t_image_is_pinned_and_never_installs_torch():
    steps = instructions(REPO / "docker/Dockerfile.l4t")
    args = arg_defaults(steps)
    base = expand(next(rest for w, rest in steps if w == "FROM"), args)
    assert base.startswith("dustynv/l4t-pytorch:r3"), base
    assert not base.endswith(":latest")
    for word, rest in steps:
        if word == "RUN":
            for cmd in re.split(r"[;&|]+", rest):
                if "pip" in cmd and " install" in cmd:
                    assert "torch" not in cmd.replace("constraints", ""), f"pip installs torch: {cmd.strip()}"
                    assert "--constraint" in cmd, "pip must be held to the image's torch"
    cpu = instructions(REPO / "docker/Dockerfile")
    base_cpu = next(rest for w, rest in cpu if w == "FROM")
    assert ":" in base_cpu and not base_cpu.endswith(":latest")


def test_dockerignore_keeps_the_package_and_drops_local_state():
    for rel in ("pyproject.toml", "sage_runtime/daemon.py", "sage_runtime/configs/default.yaml",
                "sage_plugins/memory/__init__.py", "docker/healthcheck"):
        assert not dockerignore_excludes(rel), rel
    for rel in (".venv/bin/python", ".git/HEAD", "tests/test_wire.py", "sage_runtime/__pycache__/x.pyc",
                "benchmarks/results/attention.json"):
        assert dockerignore_excludes(rel), rel


# --------------------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read(UNIT)
    return parser


def test_unit_contract():
    svc = unit()["Service"]
    assert svc["Type"] == "notify" and svc["Restart"] == "on-failure"
    # a config error or a second daemon fails the same way each time: no restart loop
    assert set(svc["RestartPreventExitStatus"].split()) == {str(cli.EXIT_CONFIG), str(cli.EXIT_RUNNING)}
    assert svc["RuntimeDirectory"] == "sage" and svc["StateDirectory"] == "sage"
    assert _seconds(svc["WatchdogSec"]) > 0
    assert _seconds(svc["TimeoutStopSec"]) > daemon.STOP_TIMEOUT_S + 1, "SIGKILL must not cut the drain short"
    assert "kill -HUP $MAINPID" in svc["ExecReload"]
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "ProtectClock", "DevicePolicy", "DeviceAllow",
                "ProcSubset"):
        assert key not in svc, f"{key} would cut the daemon off the GPU or from telemetry"
    sysusers = (REPO / "systemd/sage-runtime.sysusers.conf").read_text().split("\n")
    user = svc["User"]
    assert any(line.split()[:2] == ["u", user] for line in sysusers if line.strip())
    members = {line.split()[2] for line in sysusers if line.startswith(f"m {user} ")}
    assert {"video", "jtop"} <= members, "GPU nodes need video, /run/jtop.sock needs jtop"


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", text.strip())
    assert m, text
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]


def test_unit_commands_exist():
    svc = unit()["Service"]
    start = shlex.split(svc["ExecStart"])
    assert Path(start[0]).name in console_scripts()
    cli.build_parser().parse_args(start[1:])
    reload_exe = shlex.split(svc["ExecReload"])[0]
    assert Path(reload_exe).exists() or shutil.which(Path(reload_exe).name), reload_exe


def test_systemd_analyze_verify(tmp_path):
    """Verify the unit as shipped, with ExecStart pointed at this environment's sage-runtime
    (the shipped path, /opt/sage-runtime/venv, exists only after deploy/install.sh)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    exe = Path(sys.executable).with_name("sage-runtime")
    assert exe.exists(), "the package's console script is not installed in this environment"
    text = UNIT.read_text().replace("/opt/sage-runtime/venv/bin/sage-runtime", str(exe))
    (tmp_path / "sage-runtime.service").write_text(text)
    proc = subprocess.run([analyze, "verify", str(tmp_path / "sage-runtime.service")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "sage-runtime.service" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("snippet", ["sage-runtime.sysusers.conf", "sage-runtime.tmpfiles.conf"])
def test_snippets_apply_to_a_scratch_root(tmp_path, snippet):
    tool = shutil.which("systemd-sysusers" if "sysusers" in snippet else "systemd-tmpfiles")
    if tool is None:
        pytest.skip("systemd tools not installed (apt-get install -y systemd)")
    (tmp_path / "etc").mkdir()  # sysusers locks <root>/etc/passwd, so <root>/etc must exist
    subprocess.run([shutil.which("systemd-sysusers") or "false", f"--root={tmp_path}",
                    str(REPO / "systemd/sage-runtime.sysusers.conf")], check=True, capture_output=True, timeout=60)
    if "tmpfiles" in snippet:
        subprocess.run([tool, f"--root={tmp_path}", "--create", str(REPO / "systemd" / snippet)], check=True,
                       capture_output=True, timeout=60)
        assert (tmp_path / "etc/sage").is_dir()
    else:
        assert "sage:" in (tmp_path / "etc/passwd").read_text()


# --------------------------------------------------------------------------- install script and configs


def test_install_script_references_exist():
    for script in ("deploy/install.sh", "deploy/uninstall.sh"):
        text = (REPO / script).read_text()
        for rel in re.findall(r'\$SOURCE/([\w./-]+)', text):
            assert (REPO / rel).exists(), f"{script} uses {rel}, not in the repo"
    assert "--system-site-packages" in (REPO / "deploy/install.sh").read_text()


@pytest.mark.parametrize("name", ["default.yaml", "jetson-orin-nano.yaml", "jetson-thor.yaml"])
def test_board_configs_are_valid(name, tmp_path):
    """Keys the config model knows must validate; the telemetry block must build TelemetryParams
    whether or not SageConfig has taken it in yet."""
    data = yaml.safe_load((REPO / "sage_runtime/configs" / name).read_text()) or {}
    telemetry = data.get("telemetry")
    if telemetry is not None:
        TelemetryParams(**telemetry)
        if "telemetry" not in SageConfig.model_fields:
            data.pop("telemetry")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    load_config(path, environ={})
