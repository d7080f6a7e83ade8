#!/usr/bin/env bash
# Builds the DaemonSet's image (deploy/Dockerfile) offline, with Docker:
# no base image is pulled (FROM scratch), so no registry is needed.
#
#   scripts/image.sh                              release build, image cgacct:<crate version>
#   scripts/image.sh --binary PATH [--tag REF]    an existing cgacct-pin instead of the release build
#   scripts/image.sh --help
#
# It stages a root filesystem in a temporary directory (removed on every
# exit path): the binary, every library `ldd` lists and the dynamic loader
# at the same paths, /etc/cgacct/pin-layout.toml from deploy/pin-layout.toml,
# and a passwd/group holding root. Then `docker build -f deploy/Dockerfile`,
# then `docker run --rm --network none REF --version` to check that the
# image runs. Idempotent: the same inputs give the same image (Docker's
# build cache), tagged again. The image reference is printed alone on
# stdout, the last line of the output; everything else goes to stderr:
#
#   ref=$(scripts/image.sh)
set -euo pipefail

say() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'EOF'
Usage: scripts/image.sh [--binary PATH] [--tag REF] [--help]

Builds the cgacct image from deploy/Dockerfile without any registry (FROM
scratch, a staged root filesystem), and prints its reference as the last line.

  --binary PATH  put this cgacct-pin in the image instead of building
                 target/release/cgacct-pin with cargo
  --tag REF      the image reference (default cgacct:<version of loader/Cargo.toml>,
                 the one deploy/daemonset.yaml names)
  --help         print this help

Needs a Docker daemon that answers `docker info` (DOCKER_HOST is honoured).
EOF
}

cd "$(dirname "$0")/.."
binary=
tag=
while [ $# -gt 0 ]; do
  case $1 in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a reference"; tag=$2; shift 2 ;;
    --help | -h) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' loader/Cargo.toml | head -n1)
[ -n "$version" ] || die "no version line in loader/Cargo.toml"
tag=${tag:-cgacct:$version}

command -v docker >/dev/null || die "docker not found: apt-get install docker.io (scripts/setup.sh installs it)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers \`docker info\`: start dockerd (or set DOCKER_HOST)"
command -v ldd >/dev/null || die "ldd not found (Debian package libc-bin)"

if [ -z "$binary" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null || die "cargo not found: run scripts/setup.sh first"
  say "cargo build --release -p cgacct-pin"
  cargo build --release -p cgacct-pin --bin cgacct-pin >&2 || die "cargo build --release failed"
  binary=${CARGO_TARGET_DIR:-target}/release/cgacct-pin
fi
[ -x "$binary" ] || die "$binary is not an executable file"

stage=$(mktemp -d "${TMPDIR:-/tmp}/cgacct-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT
rootfs=$stage/rootfs
umask 022
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/cgacct-pin"
install -D -m 0644 deploy/pin-layout.toml "$rootfs/etc/cgacct/pin-layout.toml"

# Libraries and the loader, at the paths the binary asks for. ldd prints
# "name => /path (addr)", "/path (addr)" for the loader, and no path for
# the vDSO; a static binary has none ("not a dynamic executable").
libs=$(ldd "$binary" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) (0x.*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p') || true
if grep -q 'not found' <(ldd "$binary" 2>&1); then
  die "ldd $binary: some library is not found on this host"
fi
for lib in $libs; do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  say "staged $lib"
done

# Names in a layout's [access] are looked up in the image, where only root
# exists: use numeric ids for other owners and groups.
printf 'root:x:0:0:root:/:/usr/local/bin/cgacct-pin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
printf 'passwd: files\ngroup: files\n' >"$rootfs/etc/nsswitch.conf"

say "docker build -t $tag (FROM scratch, $(du -sh "$rootfs" | cut -f1) staged)"
docker build --quiet -f deploy/Dockerfile -t "$tag" "$stage" >&2 || die "docker build failed"
docker run --rm --network none "$tag" --version >&2 || die "the image does not run: docker run --rm $tag --version failed"
printf '%s\n' "$tag"
