#!/bin/sh
# Install the system packages nnflash's integration tests need (Debian/Ubuntu):
#   openssh-server  -> /usr/sbin/sshd, started by tests/integration on a loopback port
#   iproute2        -> `ip netns` for tests that give a host its own address
#   debootstrap, qemu-user-static, binfmt-support
#                   -> the emulated aarch64 Raspberry-Pi-like host of tests/emulated
#                      (scripts/build_emu_rootfs.sh)
#   dataset-fashion-mnist
#                   -> Fashion-MNIST (four gzipped IDX files in /usr/share/datasets/fashion-mnist/),
#                      the embedded default dataset of training (nnflash.models.datasets)
# Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -eu

missing=""
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || missing="$missing openssh-client"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
[ -x /usr/sbin/debootstrap ] || missing="$missing debootstrap"
[ -x /usr/bin/qemu-aarch64-static ] || missing="$missing qemu-user-static"
[ -x /usr/sbin/update-binfmts ] || missing="$missing binfmt-support"
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing="$missing dataset-fashion-mnist"

if [ -z "$missing" ]; then
    echo "install_system_deps: nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install_system_deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO apt-get install -y --no-install-recommends $missing
