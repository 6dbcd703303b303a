#!/bin/bash
# A stand-in for `overlayd` in the lab crate's own tests: the same CLI contract, host-gw
# routes only (peers that are not on-link get path "udp" and no route). State lives in
# files beside the control socket; the "socket" is a plain file whose existence means ready.
set -euo pipefail

die() { echo "fake-overlayd: $*" >&2; exit 1; }
value() { # value SECTION KEY FILE: the first `KEY = "V"` after line `[SECTION]`
    sed -n "/^\[$1\]/,/^\[/ s/^$2 = \"\(.*\)\"\$/\1/p" "$3" | head -n 1
}

cmd=${1:-}; shift || true
case "$cmd" in
run)
    [ "${1:-}" = --config ] || die "usage: run --config FILE"
    config=$2
    sock=$(value daemon control_socket "$config")
    dir=$(dirname "$sock")
    name=$(value node name "$config")
    subnet=$(value node pod_subnet "$config")
    base=${subnet%.*}
    mkdir -p "$dir"
    echo "$name" > "$dir/name"
    echo "$base" > "$dir/base"
    ip link add ovd0 type bridge 2>/dev/null || true
    ip addr replace "$base.1/24" dev ovd0
    ip link set ovd0 up
    peers=""
    while read -r peer underlay psubnet; do
        route=$(ip route get "$underlay")
        if [[ $route == *" via "* ]]; then
            path=udp
        else
            path=host-gw
            ip route replace "$psubnet" via "$underlay"
        fi
        peers+="${peers:+,}{\"name\":\"$peer\",\"underlay\":\"$underlay\",\"pod_subnet\":\"$psubnet\",\"path\":\"$path\",\"tx_packets\":0,\"tx_bytes\":0,\"rx_packets\":0,\"rx_bytes\":0,\"drops\":0}"
    done < <(awk -F' = ' '/^\[\[peer\]\]/ {p=1; next} /^\[/ {p=0}
        p && $1=="name" {n=$2} p && $1=="underlay_address" {u=$2}
        p && $1=="pod_subnet" {gsub(/"/,"",n); gsub(/"/,"",u); gsub(/"/,"",$2); print n, u, $2}' "$config")
    echo "{\"peers\":[$peers]}" > "$dir/peers.json"
    echo "fake-overlayd: node $name ready" >&2
    touch "$sock"
    trap 'rm -f "$sock"; exit 0' TERM INT
    while :; do sleep 1; done
    ;;
status)
    sock=${OVERLAYD_SOCKET:?}
    [ -e "$sock" ] || die "cannot connect to $sock"
    echo "{\"node\":\"$(cat "$(dirname "$sock")/name")\",\"ready\":true}"
    ;;
peers)
    sock=${OVERLAYD_SOCKET:?}
    [ -e "$sock" ] || die "cannot connect to $sock"
    cat "$(dirname "$sock")/peers.json"
    ;;
pod)
    sock=${OVERLAYD_SOCKET:?}
    [ -e "$sock" ] || die "cannot connect to $sock"
    dir=$(dirname "$sock")
    [ "${1:-}" = add ] || die "only pod add is faked"
    pod=$2; [ "${3:-}" = --netns ] || die "pod add needs --netns"
    netns=$4
    base=$(cat "$dir/base")
    count=$(cat "$dir/pods" 2>/dev/null || echo 0)
    echo $((count + 1)) > "$dir/pods"
    ip="$base.$((count + 2))"
    ip link add "v$pod" type veth peer name eth0 netns "$netns"
    ip link set "v$pod" master ovd0 up
    nsenter --net="$netns" ip addr add "$ip/24" dev eth0
    nsenter --net="$netns" ip link set eth0 up
    nsenter --net="$netns" ip route add default via "$base.1"
    echo "{\"name\":\"$pod\",\"ip\":\"$ip\",\"netns\":\"$netns\",\"veth\":\"v$pod\"}"
    ;;
*)
    die "unknown command: $cmd"
    ;;
esac
