#!/usr/bin/env bash
# The test command: `bash scripts/test.sh` from anywhere in the checkout.
#
# 1. fails fast on formatting and clippy warnings;
# 2. installs nginx if it is missing (the end-to-end tests start their own nginx on a random
#    loopback port with their own config; the system nginx service is never used);
#    likewise systemd-analyze (the unit files in dist/systemd are checked with `verify`);
# 3. builds the `bitsd` and `bitsctl` binaries (the end-to-end tests run them from target/debug);
# 4. runs every test in the workspace. The closing "test result:" lines are what CI counts.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

find_nginx() {
    command -v nginx 2>/dev/null && return 0
    for candidate in /usr/sbin/nginx /usr/local/sbin/nginx /usr/local/nginx/sbin/nginx; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Sets the array `sudo` to what apt-get needs to run as root here (nothing when root), or exits
# with a message naming WHAT is missing and the PACKAGE to install by hand.
need_apt() {
    local what=$1 package=$2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "error: $what is missing and this script is not root and sudo is missing;" >&2
            echo "       install it yourself (apt-get install $package) and run again" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $what is missing and apt-get is not available; install $package and run again" >&2
        exit 1
    fi
}

install_nginx() {
    local sudo
    need_apt nginx nginx-light
    # Keep the package's own service from starting (it would try to bind port 80): policy-rc.d
    # exit 101 tells invoke-rc.d "not allowed". Without systemd (containers) nothing starts anyway.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        created_policy=1
        # Never leave it behind, even if interrupted.
        trap "${sudo[*]} rm -f $policy" EXIT
    fi
    local status=0
    "${sudo[@]}" apt-get update -q || status=$?
    if [ "$status" -eq 0 ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light \
            || "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx \
            || status=$?
    fi
    if [ "$created_policy" -eq 1 ]; then
        "${sudo[@]}" rm -f "$policy"
        trap - EXIT
    fi
    if [ "$status" -ne 0 ] || ! find_nginx >/dev/null; then
        echo "error: installing nginx failed (apt-get exit status $status); the end-to-end tests need it" >&2
        exit 1
    fi
}

# `systemd-analyze verify` checks the unit files in dist/systemd (tests/e2e/systemd.rs). Debian has
# no smaller package with it than systemd itself; installing that does not make systemd the init
# system (systemd-sysv does) and starts nothing here.
install_systemd_analyze() {
    local sudo
    need_apt systemd-analyze systemd
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "error: installing systemd did not provide systemd-analyze; the end-to-end tests need it" >&2
        exit 1
    fi
}

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if ! nginx_bin="$(find_nginx)"; then
    step "installing nginx (needed by the end-to-end tests)"
    install_nginx
    nginx_bin="$(find_nginx)"
fi
echo "nginx: $nginx_bin ($("$nginx_bin" -v 2>&1))"
# The tests look nginx up on PATH first; /usr/sbin is not on every user's PATH.
export NGINX="$nginx_bin"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    step "installing systemd-analyze (needed to check the systemd units)"
    install_systemd_analyze
fi

step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace"
cargo test --workspace
