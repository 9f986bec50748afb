#!/usr/bin/env bash
# Remove what deploy/install.sh installed. Config (/etc/sage) and state (/var/lib/sage: trust,
# memory DB) stay unless --purge.
#
#   sudo deploy/uninstall.sh [--purge]
#   deploy/uninstall.sh --prefix /tmp/root [--dry-run]
set -euo pipefail

usage() {
    cat <<'EOF'
usage: uninstall.sh [options]
  --dry-run      print every step without running it
  --prefix DIR   the root install.sh --prefix used
  --purge        also remove /etc/sage, /var/lib/sage and the sage user
  -h, --help     this text
EOF
}

DRY_RUN=0
PREFIX=""
PURGE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

ROOT=""
[[ -n "$PREFIX" ]] && ROOT="$(realpath -m "$PREFIX")"
ROOT_ARG=()
[[ -n "$ROOT" ]] && ROOT_ARG=(--root="$ROOT")

step() { echo "==> $*"; }
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    [[ $DRY_RUN -eq 1 ]] || "$@"
}
if [[ -z "$ROOT" && $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    echo "uninstall.sh: removing from / needs root (or use --prefix / --dry-run)" >&2
    exit 1
fi

step "stop and disable the service"
if [[ -z "$ROOT" ]]; then
    run systemctl disable --now sage-runtime.service || true
else
    run systemctl "${ROOT_ARG[@]}" disable sage-runtime.service || true
fi

step "remove the unit, the venv and the snippets"
run rm -f "$ROOT/etc/systemd/system/sage-runtime.service" "$ROOT/etc/sysusers.d/sage-runtime.conf" \
    "$ROOT/etc/tmpfiles.d/sage-runtime.conf"
run rm -rf "$ROOT/opt/sage-runtime"
if [[ -z "$ROOT" ]]; then
    run systemctl daemon-reload
fi

if [[ $PURGE -eq 1 ]]; then
    step "purge config, state and the user"
    run rm -rf "$ROOT/etc/sage" "$ROOT/var/lib/sage"
    if grep -q '^sage:' "$ROOT/etc/passwd" 2>/dev/null; then
        if [[ -n "$ROOT" ]]; then
            run userdel --prefix "$ROOT" sage
        else
            run userdel sage
        fi
    fi
else
    echo "kept $ROOT/etc/sage and $ROOT/var/lib/sage (use --purge to remove them)"
fi
step "done"
