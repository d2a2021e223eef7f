#!/usr/bin/env bash
# Prepares a Debian 12 host for vdipool: build and run dependencies, a running
# libvirt stack (virtlogd + libvirtd under a subreaper) and /dev/kvm access.
# Idempotent; works with or without systemd. Run as root.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (it installs packages and starts libvirtd)" >&2
    exit 1
fi

PACKAGES=(
    build-essential cmake pkg-config git
    check libsqlite3-dev libjansson-dev libuv1-dev libconfig-dev
    libhttp-parser-dev libsystemd-dev
    libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system
    libvirt-clients qemu-system-x86 qemu-utils
    libssl-dev tini e2fsprogs util-linux procps curl clang libclang-rt-14-dev time
    # deploy/make-linux-gold.sh (the Linux test gold): modules, the initramfs,
    # and the libraries qemu-guest-agent links (copied into the gold)
    kmod cpio libglib2.0-0 libnuma1 liburing2 libudev1
)

# Packages only some callers need (the tests' browser), space-separated.
read -r -a extra <<< "${VDIPOOL_EXTRA_PACKAGES:-}"
PACKAGES+=("${extra[@]}")

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Package scripts try to start services; without systemd that is a no-op.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU runs as libvirt-qemu, which is in group kvm. Without access to /dev/kvm
# libvirt re-probes QEMU on every domain start (~50 s each).
if [ -e /dev/kvm ]; then
    getent group kvm >/dev/null || groupadd --system kvm
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

have_systemd() { [ -d /run/systemd/system ]; }

if have_systemd; then
    systemctl start virtlogd.socket libvirtd.socket libvirtd.service 2>/dev/null || true
else
    if ! pgrep -x virtlogd >/dev/null; then
        log "starting virtlogd"
        virtlogd -d
    fi
    if ! pgrep -x libvirtd >/dev/null; then
        log "starting libvirtd under tini -s (a subreaper, so QEMU exits are reaped at once)"
        # tini stays in the foreground as the subreaper; libvirtd runs as its child.
        setsid tini -s -- libvirtd >/var/log/vdipool-libvirtd.log 2>&1 < /dev/null &
    fi
fi

for _ in $(seq 1 60); do
    if virsh -c qemu:///system list >/dev/null 2>&1; then
        log "libvirt is answering on qemu:///system"
        exit 0
    fi
    sleep 0.5
done
echo "setup: libvirtd did not answer on qemu:///system within 30 s; see /var/log/vdipool-libvirtd.log" >&2
exit 1
