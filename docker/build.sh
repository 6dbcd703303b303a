#!/usr/bin/env bash
# Builds the overlayd image FROM scratch out of files on this machine: the release binary
# (built first if missing or older than the sources; OVERLAYD_BIN=path uses another),
# nft and the libraries ldd names for both, and Debian's static busybox. Prints the image's
# size. Usage: docker/build.sh [TAG]   (default overlayd:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-overlayd:latest}

bin=${OVERLAYD_BIN:-target/release/overlayd}
if [[ -z ${OVERLAYD_BIN:-} ]]; then
    cargo build --release -p overlayd
fi
for need in nft busybox; do
    command -v "$need" >/dev/null || {
        echo "build.sh: $need is missing: apt-get install -y nftables busybox-static" >&2
        exit 1
    }
done
busybox=$(command -v busybox)
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build.sh: $busybox is not static: apt-get install -y busybox-static" >&2
    exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root"/{usr/bin,usr/sbin,bin,sbin,etc/overlayd,run/netns,var/lib/overlayd,tmp,proc,sys,dev}
chmod 1777 "$root/tmp"

install -m 0755 "$bin" "$root/usr/bin/overlayd"
strip "$root/usr/bin/overlayd"
install -m 0755 "$(command -v nft)" "$root/usr/sbin/nft"
# Every shared library either needs, at the path ldd names (the dynamic loader included).
for exe in "$root/usr/bin/overlayd" "$root/usr/sbin/nft"; do
    ldd "$exe" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ -e $root/bin/$applet || -e $root/usr/bin/$applet || -e $root/usr/sbin/$applet ]] ||
        ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

cp docker/Dockerfile "$ctx/Dockerfile"
if ! docker build -q -t "$tag" "$ctx" >/dev/null 2>"$ctx/build.log"; then
    cat "$ctx/build.log" >&2
    exit 1
fi
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "built $tag: $((size / 1000 / 1000)) MB ($size bytes)"
