#!/usr/bin/env bash
# The test command: `bash scripts/test.sh` from anywhere in the checkout.
#
# 1. fails fast on formatting;
# 2. installs nginx, lighttpd and apache2 if they are missing (the end-to-end tests start their own
#    servers on random loopback ports with their own configs; the packages' services are never
#    used);
#    likewise systemd-analyze (the unit files in dist/systemd are checked with `verify`);
#    and a Python venv in target/pyenv with grpcio (the Python client tests, tests/e2e/python.rs,
#    run it: BITS_TEST_PYTHON);
# 3. builds every test target once, with clippy as the compiler of the workspace's own crates (see
#    `lint_while_building`), so a clippy warning fails the build; the end-to-end tests run the
#    `bitsd` and `bitsctl` binaries it leaves in target/debug;
# 4. runs every test in the workspace, with more test threads than cores (see below).
#    The closing "test result:" lines are what CI counts; one line after them sums them up
#    (`N passed, N failed`). The exit status is the tests'.
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

# Runs "$@" (an apt-get install) with the packages' own services kept from starting (nginx's or
# apache2's would try to bind port 80): policy-rc.d exit 101 tells invoke-rc.d "not allowed".
# Without systemd (containers) nothing starts anyway. Uses the caller's `sudo` (need_apt).
without_services() {
    local policy=/usr/sbin/policy-rc.d created_policy=0 status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        created_policy=1
        # Never leave it behind, even if interrupted.
        trap "${sudo[*]} rm -f $policy" EXIT
    fi
    "$@" || status=$?
    if [ "$created_policy" -eq 1 ]; then
        "${sudo[@]}" rm -f "$policy"
        trap - EXIT
    fi
    return "$status"
}

# apt-get update, at most once a run: every install below needs it, and a second one would only
# fetch the same package lists again. Uses the caller's `sudo` (need_apt).
apt_updated=0
apt_update() {
    if [ "$apt_updated" -eq 0 ]; then
        "${sudo[@]}" apt-get update -q || return
        apt_updated=1
    fi
}

# apt-get install of the packages "$@", quiet, without recommends, as root.
apt_install() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

install_nginx() {
    local sudo
    need_apt nginx nginx-light
    local status=0
    apt_update || status=$?
    if [ "$status" -eq 0 ]; then
        without_services apt_install nginx-light || without_services apt_install nginx || status=$?
    fi
    if [ "$status" -ne 0 ] || ! find_nginx >/dev/null; then
        echo "error: installing nginx failed (apt-get exit status $status); the end-to-end tests need it" >&2
        exit 1
    fi
}

# The servers of tests/e2e/real_servers.rs, found like nginx: on PATH, else in /usr/sbin.
find_server() {
    command -v "$1" 2>/dev/null && return 0
    [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"
}

# lighttpd and Apache httpd: tests/e2e/real_servers.rs starts each on a random loopback port with
# its own config (their packages' services are never used).
install_real_servers() {
    local sudo
    need_apt "lighttpd or apache2" "lighttpd apache2"
    local status=0
    apt_update || status=$?
    if [ "$status" -eq 0 ]; then
        without_services apt_install lighttpd apache2 || status=$?
    fi
    if [ "$status" -ne 0 ] || ! find_server lighttpd >/dev/null || ! find_server apache2 >/dev/null; then
        echo "error: installing lighttpd and apache2 failed (apt-get exit status $status); the end-to-end tests need them" >&2
        exit 1
    fi
}

# `systemd-analyze verify` checks the unit files in dist/systemd (tests/e2e/systemd.rs). Debian has
# no smaller package with it than systemd itself; installing that does not make systemd the init
# system (systemd-sysv does) and starts nothing here.
install_systemd_analyze() {
    local sudo
    need_apt systemd-analyze systemd
    apt_update
    apt_install systemd
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "error: installing systemd did not provide systemd-analyze; the end-to-end tests need it" >&2
        exit 1
    fi
}

# The Python client tests' packages, pinned; the venv is remade only when this line changes.
PYTHON_PACKAGES="grpcio==1.85.3 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1"
PYENV=target/pyenv

# A venv in $PYENV with $PYTHON_PACKAGES. Debian's python3 has neither pip nor (without
# python3-venv) ensurepip, and PEP 668 refuses pip installs into the system Python: hence a venv,
# and python3-venv from apt-get when the venv cannot be made.
install_python_env() {
    local sudo
    if [ -x "$PYENV/bin/python3" ] && [ "$(cat "$PYENV/.packages" 2>/dev/null)" = "$PYTHON_PACKAGES" ]; then
        return 0
    fi
    rm -rf "$PYENV"
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv "$PYENV" >/dev/null 2>&1; then
        rm -rf "$PYENV"
        need_apt "python3 with venv" "python3-venv"
        apt_update
        apt_install python3 python3-venv
        python3 -m venv "$PYENV"
    fi
    # shellcheck disable=SC2086 # one word per package
    if ! "$PYENV/bin/python3" -m pip install -q --disable-pip-version-check $PYTHON_PACKAGES; then
        echo "error: pip could not install $PYTHON_PACKAGES into $PYENV; the Python client tests need them" >&2
        exit 1
    fi
    echo "$PYTHON_PACKAGES" >"$PYENV/.packages"
}

# `N passed, N failed`, summed over the "test result:" lines in the file $1.
total_line() {
    awk '/^test result:/ {
            for (i = 1; i < NF; i++) {
                if ($(i + 1) ~ /^passed;?$/) passed += $i
                if ($(i + 1) ~ /^failed;?$/) failed += $i
            }
         }
         END { printf "%d passed, %d failed\n", passed, failed }' "$1"
}

# `cargo clippy --workspace --all-targets -- -D warnings`, folded into the build. A separate clippy
# run checks every dependency a second time (check and build artifacts are not shared), which cost
# a third of CI's wall time. cargo clippy itself is cargo with clippy-driver as the workspace
# crates' compiler; doing the same for `cargo test --no-run` lints every target clippy's
# --all-targets does (this workspace has no examples or benches; binaries are built as they are
# for their unit tests) while building it.
# CLIPPY_ARGS is how cargo clippy hands its `-- ARGS` to the driver.
lint_while_building() {
    local driver
    driver="$(rustc --print sysroot)/bin/clippy-driver"
    if [ ! -x "$driver" ]; then
        echo "error: $driver is missing; install clippy (rustup component add clippy) and run again" >&2
        exit 1
    fi
    export RUSTC_WORKSPACE_WRAPPER="$driver"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
    # These builds differ from a developer's anyway (the wrapper is part of their fingerprint), and
    # incremental caches only cost time on a build that runs once.
    export CARGO_INCREMENTAL=0
}

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

if ! nginx_bin="$(find_nginx)"; then
    step "installing nginx (needed by the end-to-end tests)"
    install_nginx
    nginx_bin="$(find_nginx)"
fi
echo "nginx: $nginx_bin ($("$nginx_bin" -v 2>&1))"
# The tests look nginx up on PATH first; /usr/sbin is not on every user's PATH.
export NGINX="$nginx_bin"

if ! find_server lighttpd >/dev/null || ! find_server apache2 >/dev/null; then
    step "installing lighttpd and apache2 (needed by tests/e2e/real_servers.rs)"
    install_real_servers
fi
LIGHTTPD="$(find_server lighttpd)"
APACHE2="$(find_server apache2)"
echo "lighttpd: $LIGHTTPD ($("$LIGHTTPD" -v 2>&1 | head -n 1)); apache2: $APACHE2 ($("$APACHE2" -v 2>&1 | head -n 1))"
export LIGHTTPD APACHE2

if ! command -v systemd-analyze >/dev/null 2>&1; then
    step "installing systemd-analyze (needed to check the systemd units)"
    install_systemd_analyze
fi

step "Python client packages in $PYENV (needed by tests/e2e/python.rs)"
install_python_env
"$PYENV/bin/python3" --version
export BITS_TEST_PYTHON="$PWD/$PYENV/bin/python3"

# `cargo test` builds the `bitsd` and `bitsctl` binaries the end-to-end tests run (their packages
# have integration tests). A `cargo build --workspace --bins` on top would build tokio, hyper,
# tonic and every workspace crate again, with the features of a build without dev-dependencies:
# 40 s for nothing the tests use.
step "cargo test --workspace --no-run (linted: clippy -D warnings)"
lint_while_building
cargo test --workspace --no-run

step "cargo test --workspace"
output=target/test-output.log
status=0
# Most tests spend their time waiting (on daemons, nginx, servers, timers): 8 threads on 2 cores
# take a third of the wall time of the default (a thread a core) for the same CPU time.
cargo test --workspace -- --test-threads=8 2>&1 | tee "$output" || status=$?
step "total"
total_line "$output"
exit "$status"
