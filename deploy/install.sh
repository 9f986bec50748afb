#!/usr/bin/env bash
# Install sage-runtime as a systemd service on a Jetson (or any systemd Linux host).
#
# Keeps JetPack's torch: the venv is made with --system-site-packages from the system python and
# pip is constrained to the torch already there, so it can never download one over it.
#
#   sudo deploy/install.sh                 # install, enable, start
#   deploy/install.sh --dry-run            # print every step, change nothing
#   deploy/install.sh --prefix /tmp/root   # install under another root (no start; CI)
#
# Layout (under --prefix when given): /opt/sage-runtime/venv, /etc/sage/sage-runtime.yaml,
# /etc/systemd/system/sage-runtime.service, /etc/sysusers.d/ and /etc/tmpfiles.d/sage-runtime.conf.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [options]
  --dry-run             print every step without running it
  --prefix DIR          install under DIR instead of /; the unit points into DIR; nothing is started
  --python PATH         base interpreter for the venv (default: /usr/bin/python3, JetPack's python)
  --source DIR          project to install (default: the checkout holding this script)
  --wheel FILE          install this built wheel instead of building from --source
  --config FILE         config to install (default: the profile for the detected board)
  --site-packages DIR   also put DIR on the venv's path (.pth); CI reuses an existing environment
  --pip-args "ARGS"     extra pip arguments, e.g. "--no-index --no-deps" offline
  --no-start            enable but do not start the service
  -h, --help            this text
EOF
}

DRY_RUN=0
PREFIX=""
PYTHON=/usr/bin/python3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(dirname "$HERE")"
WHEEL=""
CONFIG=""
EXTRA_SITE=""
PIP_ARGS=""
START=1

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --python) PYTHON="${2:?--python needs a path}"; shift ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift ;;
        --wheel) WHEEL="${2:?--wheel needs a file}"; shift ;;
        --config) CONFIG="${2:?--config needs a file}"; shift ;;
        --site-packages) EXTRA_SITE="${2:?--site-packages needs a directory}"; shift ;;
        --pip-args) PIP_ARGS="${2?}"; shift ;;
        --no-start) START=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [[ -n "$PREFIX" ]]; then
    ROOT="$(realpath -m "$PREFIX")"
else
    ROOT=""
fi
APP_DIR="$ROOT/opt/sage-runtime"
VENV="$APP_DIR/venv"
CONF_DIR="$ROOT/etc/sage"
CONF="$CONF_DIR/sage-runtime.yaml"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/sage-runtime.service"
SYSUSERS="$ROOT/etc/sysusers.d/sage-runtime.conf"
TMPFILES="$ROOT/etc/tmpfiles.d/sage-runtime.conf"
ROOT_ARG=()
[[ -n "$ROOT" ]] && ROOT_ARG=(--root="$ROOT")

step() { echo "==> $*"; }
# run CMD...: print it, then run it unless --dry-run.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    [[ $DRY_RUN -eq 1 ]] || "$@"
}
# run_quiet CMD...: the same, discarding the command's stdout.
run_quiet() {
    printf '+'; printf ' %q' "$@"; printf ' >/dev/null\n'
    [[ $DRY_RUN -eq 1 ]] || "$@" >/dev/null
}
die() { echo "install.sh: $*" >&2; exit 1; }

step "detect the platform"
L4T=""
if [[ -r /etc/nv_tegra_release ]]; then
    # "# R36 (release), REVISION: 4.3, ..." -> 36.4.3
    L4T="$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\),.*/\1.\2/p' /etc/nv_tegra_release)"
fi
MODEL="$(tr -d '\0' 2>/dev/null </proc/device-tree/model || true)"
if [[ -n "$L4T" ]]; then
    echo "L4T R$L4T on ${MODEL:-unknown Jetson}"
else
    echo "not a Jetson (no /etc/nv_tegra_release): generic Linux install"
fi
if [[ -z "$CONFIG" ]]; then
    case "$MODEL" in
        *Thor*) CONFIG="$SOURCE/sage_runtime/configs/jetson-thor.yaml" ;;
        *Orin*) CONFIG="$SOURCE/sage_runtime/configs/jetson-orin-nano.yaml" ;;
        *) CONFIG="$SOURCE/sage_runtime/configs/default.yaml" ;;
    esac
fi
echo "config profile: $CONFIG"
[[ -f "$CONFIG" ]] || die "config $CONFIG not found"
[[ -x "$PYTHON" ]] || die "python $PYTHON not found (give --python)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than 3.10"
if [[ -z "$ROOT" && $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    die "installing into / needs root (or use --prefix / --dry-run)"
fi

step "service user and directories (sysusers.d, tmpfiles.d)"
run install -D -m 0644 "$SOURCE/systemd/sage-runtime.sysusers.conf" "$SYSUSERS"
run install -D -m 0644 "$SOURCE/systemd/sage-runtime.tmpfiles.conf" "$TMPFILES"
if command -v systemd-sysusers >/dev/null; then
    run systemd-sysusers "${ROOT_ARG[@]}" "$SYSUSERS"
elif [[ -z "$ROOT" ]]; then
    getent passwd sage >/dev/null || run useradd --system --home-dir /var/lib/sage --shell /usr/sbin/nologin \
        --user-group sage
    for group in video render jtop; do
        if getent group "$group" >/dev/null; then
            run usermod -a -G "$group" sage
        fi
    done
else
    die "systemd-sysusers is needed to create the user under --prefix"
fi

step "venv with the system site-packages (JetPack's torch stays)"
if [[ -x "$VENV/bin/python" ]]; then
    echo "reusing $VENV"
else
    run "$PYTHON" -m venv --system-site-packages "$VENV"
fi
if [[ -n "$EXTRA_SITE" ]]; then
    PTH_DIR="$("$PYTHON" -c 'import sys; print(f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages")')"
    run sh -c 'printf "%s\n" "$1" > "$2"' sh "$EXTRA_SITE" "$VENV/$PTH_DIR/zz-sage-extra-site.pth"
fi

step "pin torch to the one already installed"
CONSTRAINTS="$APP_DIR/constraints.txt"
PROBE="$VENV/bin/python"
[[ -x "$PROBE" ]] || PROBE="$PYTHON"  # dry run: the venv does not exist yet; it sees the same torch
# The installed distribution's version is what pip compares against; reading it imports nothing.
TORCH_VERSION_PY='import importlib.metadata as m; print(m.version("torch"))'
TORCH_BEFORE="$("$PROBE" -c "$TORCH_VERSION_PY" 2>/dev/null || true)"
if [[ -n "$TORCH_BEFORE" ]]; then
    echo "torch $TORCH_BEFORE found; pip may not replace it"
    run sh -c 'printf "torch==%s\n" "$1" > "$2"' sh "$TORCH_BEFORE" "$CONSTRAINTS"
elif [[ -n "$L4T" ]]; then
    die "no torch in $PYTHON's site-packages: install the PyTorch wheel for JetPack first (docs/operations.md)"
else
    echo "no torch yet: pip installs it from the index (off Jetson only)"
    run sh -c ': > "$1"' sh "$CONSTRAINTS"
fi

step "install sage-runtime with the jetson extra"
if [[ -n "$WHEEL" ]]; then
    TARGET="${WHEEL}[jetson]"
else
    # Build from a copy: the checkout may be read-only or shared, and setuptools writes build/ in-tree.
    STAGE="<staging dir>"  # what a dry run prints in its place
    if [[ $DRY_RUN -eq 0 ]]; then
        STAGE="$(mktemp -d)"
        trap 'rm -rf "$STAGE"' EXIT
    fi
    for item in pyproject.toml README.md LICENSE sage_runtime sage_plugins; do
        if [[ -e "$SOURCE/$item" ]]; then
            run cp -r "$SOURCE/$item" "$STAGE/"
        fi
    done
    TARGET="${STAGE}[jetson]"
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
run "$VENV/bin/python" -m pip install --upgrade --constraint "$CONSTRAINTS" $PIP_ARGS "$TARGET"

step "check the install"
if [[ $DRY_RUN -eq 0 && -n "$TORCH_BEFORE" ]]; then
    TORCH_AFTER="$("$VENV/bin/python" -c "$TORCH_VERSION_PY")"
    [[ "$TORCH_AFTER" == "$TORCH_BEFORE" ]] || die "torch changed from $TORCH_BEFORE to $TORCH_AFTER"
    echo "torch $TORCH_AFTER unchanged"
fi
run "$VENV/bin/sage-runtime" --version

step "config"
if [[ -e "$CONF" ]]; then
    echo "keeping the existing $CONF"
else
    run install -D -m 0640 "$CONFIG" "$CONF"
fi
run_quiet "$VENV/bin/sage-runtime" --check-config --config "$CONF"
run systemd-tmpfiles "${ROOT_ARG[@]}" --create "$TMPFILES"

step "systemd unit"
run install -D -m 0644 "$SOURCE/systemd/sage-runtime.service" "$UNIT"
if [[ -n "$ROOT" ]]; then
    # The unit runs what was installed under the prefix.
    run sed -i -e "s#/opt/sage-runtime/#$APP_DIR/#g" -e "s#/etc/sage/#$CONF_DIR/#g" "$UNIT"
fi
if command -v systemd-analyze >/dev/null; then
    run systemd-analyze verify "$UNIT"
fi
if [[ -z "$ROOT" ]]; then
    run systemctl daemon-reload
fi
run systemctl "${ROOT_ARG[@]}" enable sage-runtime.service
if [[ -z "$ROOT" && $START -eq 1 ]]; then
    run systemctl restart sage-runtime.service
    echo "started; check with: systemctl status sage-runtime; SAGE_RUNTIME_DIR=/run/sage $VENV/bin/sagectl status"
else
    echo "enabled, not started (--prefix or --no-start)"
fi
step "done"
