#!/usr/bin/env bash
# Runs every test of cairn on this machine, installing what the tests need
# first (Debian packages: the C/C++ toolchain bits RocksDB's bindings need,
# protoc for the etcd-client test dependency, the real etcd and etcdctl
# that the integration and differential tests run beside cairn, openssl for
# the TLS tests' PKI, curl, and systemd-analyze for the unit file).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# One target dir outside the clone, shared by every clone on this machine:
# RocksDB's C++ build takes ~10 minutes cold and seconds when warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"
mkdir -p "$CARGO_TARGET_DIR"

cargo build --bins --tests
cargo test --no-fail-fast -- --test-threads="${CAIRN_TEST_THREADS:-2}"
