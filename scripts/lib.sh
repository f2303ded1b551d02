# shellcheck shell=bash
# Helpers shared by scripts/serve, scripts/test and the bench scripts. Sourced, not run.
#
# - say / die: progress and error messages (on stderr).
# - ensure_commands "COMMAND:DEBIAN-PACKAGE[ PACKAGE...]"...: installs, with
#   apt-get, the packages of every COMMAND that is not on PATH.
# - write_bench_section HEADING SECTION_FILE OUT: puts a benchmark's section
#   into OUT (docs/benchmarks.md), replacing the one under HEADING.
# - ensure_cargo: finds cargo (installing rustup when it is missing and the
#   network allows) and checks that the toolchain is new enough.

sf_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	else
		sudo "$@"
	fi
}

sf_apt_updated=

ensure_commands() {
	local entry cmd pkg missing=()
	for entry in "$@"; do
		cmd=${entry%%:*}
		command -v "$cmd" >/dev/null 2>&1 && continue
		for pkg in ${entry#*:}; do
			case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
		done
	done
	[ ${#missing[@]} -eq 0 ] && return 0

	if ! command -v apt-get >/dev/null 2>&1; then
		die "missing tools and no apt-get here; install these Debian packages (or your system's equivalents): ${missing[*]}"
	fi
	if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
		die "missing packages and no sudo; as root, run: apt-get update && apt-get install ${missing[*]}"
	fi
	if [ -z "$sf_apt_updated" ]; then
		say "apt-get update"
		as_root apt-get update -q
		sf_apt_updated=1
	fi
	say "installing Debian packages: ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"

	for entry in "$@"; do
		cmd=${entry%%:*}
		command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is still missing after installing: ${entry#*:}"
	done
}

# The `rust-version` the workspace declares, e.g. 1.90.
sf_rust_version() {
	sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$sf_root/Cargo.toml" | head -n1
}

ensure_cargo() {
	local cargo_bin="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
	if ! command -v cargo >/dev/null 2>&1 && [ -x "$cargo_bin/cargo" ]; then
		export PATH="$cargo_bin:$PATH"
	fi
	if ! command -v cargo >/dev/null 2>&1; then
		say "cargo not found: installing Rust with rustup (https://rustup.rs)"
		ensure_commands "curl:curl ca-certificates" "cc:build-essential"
		local installer
		installer="$(mktemp)"
		if ! curl --proto '=https' --tlsv1.2 -sSf --max-time 120 https://sh.rustup.rs -o "$installer"; then
			rm -f "$installer"
			die "cargo is not installed and the rustup installer could not be downloaded (no network?).
       Install Rust $(sf_rust_version) or newer with rustup (https://rustup.rs), then run this again.
       (Debian's own cargo package is too old for this workspace.)"
		fi
		if ! sh "$installer" -y --profile minimal --default-toolchain stable; then
			rm -f "$installer"
			die "the rustup installer failed (see above); install Rust from https://rustup.rs and run this again"
		fi
		rm -f "$installer"
		export PATH="$cargo_bin:$PATH"
		command -v cargo >/dev/null 2>&1 || die "rustup finished but cargo is not in $cargo_bin"
	fi

	local want have
	want="$(sf_rust_version)"
	have="$(rustc --version 2>/dev/null | awk '{print $2}')"
	have="${have%%-*}"
	if [ -n "$want" ] && [ -n "$have" ] &&
		[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
		if command -v rustup >/dev/null 2>&1; then
			die "rustc $have is older than the $want this workspace needs; run: rustup update stable"
		fi
		die "rustc $have ($(command -v rustc)) is older than the $want this workspace needs;
       install a current toolchain with rustup (https://rustup.rs) and make sure ~/.cargo/bin comes first in PATH"
	fi
}

# Replaces the section of OUT that starts at the line HEADING (up to the next
# "## " heading) with the contents of SECTION_FILE, or appends it; the rest
# of OUT is left alone. Every bench script writes its table through this.
write_bench_section() { # heading section_file out
	local tmp
	tmp=$(mktemp)
	touch "$3"
	awk -v heading="$1" -v section="$2" '
		function emit() { while ((getline line < section) > 0) print line; close(section) }
		$0 == heading { skipping = 1; done = 1; emit(); next }
		skipping && /^## / { skipping = 0; print "" }
		!skipping { print }
		END { if (!done) { if (NR > 0) print ""; emit() } }
	' "$3" >"$tmp"
	cat "$tmp" >"$3"
	rm -f "$tmp"
}
