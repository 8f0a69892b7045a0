#!/usr/bin/env bash
# imapgate's one test command (CI runs it through .ci/run). Run it from
# anywhere; it works from the repository root.
#
# 1. Installs what the tests need when missing: Dovecot (dovecot-imapd, the
#    IMAP backend that deploy/dovecot runs on free loopback ports), python3
#    (imaplib client test) and prometheus (for promtool).
#    The package's own system-wide Dovecot (ports 143/993) is kept from
#    starting through policy-rc.d, and stopped if it runs anyway.
# 2. go vet, a gofmt check, staticcheck (a pinned version, fetched through the
#    Go module proxy on first use), go test -race.
#
# Knobs (environment):
#   IMAPGATE_NO_INSTALL=1  never install packages (tests needing Dovecot then
#                          skip, or fail when CI is set)
#   IMAPGATE_NO_STATICCHECK=1
#                          skip staticcheck (for a machine that reaches no Go
#                          module proxy and has not fetched it before)
#   GO_TEST_FLAGS          extra flags for go test (e.g. "-run TestX -v")
#   GO_TEST_PKGS           packages to test (default ./...)
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="/usr/local/go/bin:$PATH"
fi

log() { printf '==> %s\n' "$*" >&2; }

have_dovecot() {
	command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]
}

# as_root runs a command as root (directly, or through sudo -n).
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		log "need root to run: $*"
		return 1
	fi
}

# stop_system_dovecot stops a Dovecot started from /etc/dovecot (base_dir
# /run/dovecot). Test instances have their own base_dir, so they never match.
stop_system_dovecot() {
	local pid
	pid=$(cat /run/dovecot/master.pid 2>/dev/null || true)
	case "$pid" in '' | *[!0-9]*) return 0 ;; esac
	[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" = /usr/sbin/dovecot ] || return 0
	log "stopping the system-wide Dovecot (pid $pid)"
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		as_root systemctl stop dovecot.service dovecot.socket || true
	fi
	if kill -0 "$pid" 2>/dev/null; then
		as_root kill -TERM "$pid" || true
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
}

policy_rc=/usr/sbin/policy-rc.d
created_policy=""
remove_policy() {
	if [ -n "$created_policy" ]; then
		as_root rm -f "$policy_rc" || true
		created_policy=""
	fi
}
trap remove_policy EXIT

install_missing() {
	local pkgs=()
	have_dovecot || pkgs+=(dovecot-imapd)
	command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
	# promtool checks the metrics, alert rules and dashboard queries (admin tests).
	command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
	[ "${#pkgs[@]}" -gt 0 ] || return 0
	if [ "${IMAPGATE_NO_INSTALL:-}" = 1 ]; then
		log "IMAPGATE_NO_INSTALL=1: not installing ${pkgs[*]}"
		return 0
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		log "no apt-get: install ${pkgs[*]} by hand"
		return 0
	fi
	# Keep the package from starting a system-wide Dovecot on 143/993.
	if [ ! -e "$policy_rc" ]; then
		printf '#!/bin/sh\n# imapgate deploy/test.sh: no service starts during the install\nexit 101\n' |
			as_root tee "$policy_rc" >/dev/null
		as_root chmod 755 "$policy_rc"
		created_policy=1
	fi
	log "installing ${pkgs[*]}"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
	remove_policy
	stop_system_dovecot
}

install_missing
if have_dovecot; then
	log "dovecot: $( (dovecot --version 2>/dev/null || /usr/sbin/dovecot --version) | head -n1)"
fi

log "go vet"
go vet ./...

log "gofmt"
unformatted=$(find . -name '*.go' -not -path './vendor/*' -not -path '*/testdata/*' -not -path './.git/*' -print0 |
	xargs -0 -r gofmt -l)
if [ -n "$unformatted" ]; then
	log "these files need gofmt -w:"
	printf '%s\n' "$unformatted" >&2
	exit 1
fi

# staticcheck finds what vet does not: unused code, deprecated calls, simplifications. Pinned,
# so a new release never turns a clean tree red; "go run pkg@version" keeps it out of go.mod.
if [ "${IMAPGATE_NO_STATICCHECK:-}" = 1 ]; then
	log "IMAPGATE_NO_STATICCHECK=1: not running staticcheck"
else
	log "staticcheck"
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
fi

log "go test"
# shellcheck disable=SC2086 # GO_TEST_FLAGS and GO_TEST_PKGS are word lists
go test -race -timeout 20m ${GO_TEST_FLAGS:-} ${GO_TEST_PKGS:-./...}
