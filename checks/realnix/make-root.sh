#!/usr/bin/env bash
# Makes (once) a Debian root with that suite's Nix for the real-Nix tests
# (agent/tests/real_nix.rs, docs/testing.md): `debootstrap --variant=minbase
# SUITE`, then `apt-get install nix-bin git` inside it (nix-bin through
# debootstrap's --include fails on a virtual dependency), and a nix.conf for a
# store without a daemon, a sandbox or a cache.
#
#   checks/realnix/make-root.sh SUITE DIR [PACKAGE...]
#
# PACKAGEs are installed as well (the host twin's root adds systemd and dbus:
# agent/tests/twin/).
#
# DIR is complete when DIR/.nixfleet-root-ready exists and names the same
# PACKAGEs; until then the work
# is in DIR.partial, whose base system (once debootstrap finished) an
# interrupted run uses again. Needs root, debootstrap and unshare; every
# mount is made in a mount namespace of the script's own, so none outlives it.
set -euo pipefail
if [ -z "${NIXFLEET_MAKE_ROOT_UNSHARED:-}" ]; then
  NIXFLEET_MAKE_ROOT_UNSHARED=1 exec unshare --mount --propagation private bash "$0" "$@"
fi
suite=$1
dir=$2
shift 2
extra="$*"
ready="$dir/.nixfleet-root-ready"
# the marker holds the extra packages: a root made with others gets them
# installed (its base system is kept)
if [ -e "$ready" ]; then
  [ "$(cat "$ready")" = "$extra" ] && exit 0
  rm -rf "$dir.partial"
  mv "$dir" "$dir.partial"
  rm -f "$dir.partial/.nixfleet-root-ready"
  touch "$dir.partial/.debootstrapped"
fi
[ "$(id -u)" = 0 ] || { echo "make-root.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "make-root.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
# the Debian mirror this machine's apt uses (its first deb822 or one-line
# source that is not the security archive), unless NIXFLEET_DEBIAN_MIRROR
# names one; with neither, debootstrap's default
mirror=${NIXFLEET_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }')
fi
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list 2>/dev/null |
    awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }')
fi
mkdir -p "$(dirname "$dir")"
# a base system made by an earlier, interrupted run is used again
if [ ! -e "$dir.partial/.debootstrapped" ]; then
  rm -rf "$dir.partial"
  debootstrap --variant=minbase "$suite" "$dir.partial" ${mirror:+"$mirror"} >"$dir.partial.log" 2>&1 || {
    echo "make-root.sh: debootstrap $suite failed; its log: $dir.partial.log" >&2
    tail -n 20 "$dir.partial.log" >&2
    exit 1
  }
  touch "$dir.partial/.debootstrapped"
fi
cp /etc/resolv.conf "$dir.partial/etc/resolv.conf" 2>/dev/null || true
mount --bind /dev "$dir.partial/dev"
mount -t proc proc "$dir.partial/proc"
if ! chroot "$dir.partial" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -c "apt-get -o Acquire::Check-Valid-Until=false update -qq && apt-get install -y -qq --no-install-recommends nix-bin git ca-certificates $extra" >>"$dir.partial.log" 2>&1; then
  echo "make-root.sh: apt-get install nix-bin in the $suite root failed; its log: $dir.partial.log" >&2
  tail -n 20 "$dir.partial.log" >&2
  exit 1
fi
chroot "$dir.partial" apt-get clean >/dev/null 2>&1 || true
umount "$dir.partial/proc" "$dir.partial/dev"
mkdir -p "$dir.partial/etc/nix"
cat >"$dir.partial/etc/nix/nix.conf" <<'CONF'
# the real-Nix tests: one root user, no daemon, no sandbox, no binary cache
sandbox = false
build-users-group =
substituters =
CONF
rm -rf "$dir"
mv "$dir.partial" "$dir"
printf '%s' "$extra" >"$ready"
rm -f "$dir.partial.log" "$dir/.debootstrapped"
