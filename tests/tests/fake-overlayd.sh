#!/bin/bash
# A stand-in for `overlayd` in the lab crate's own tests: the same CLI contract, host-gw
# routes only (peers that are not on-link get path "udp" and no route). State lives in
# files beside the control socket; the "socket" is a plain file whose existence means ready.
#
# With [gossip] the "cluster" is the lab's run dir: every node publishes RUN/NODE/member
# ("NAME UNDERLAY SUBNET PID") and takes as peers the other members whose process is
# alive, besides its static peers. A node without node.pod_subnet claims the first free
# /24 from .101 up of cluster.cidr (a mkdir in RUN/fake-claims is atomic) and keeps it
# across restarts. The key file must exist with mode 0600 and hold 64 hex digits.
set -euo pipefail

die() { echo "fake-overlayd: $*" >&2; exit 1; }
value() { # value SECTION KEY FILE: the first `KEY = "V"` after line `[SECTION]`
    sed -n "/^\[$1\]/,/^\[/ s/^$2 = \"\(.*\)\"\$/\1/p" "$3" | head -n 1
}
socket_dir() { # the state dir of the daemon OVERLAYD_SOCKET points at, if it is ready
    local sock=${OVERLAYD_SOCKET:?}
    [ -e "$sock" ] || die "cannot connect to $sock"
    dirname "$sock"
}

# route_peer UNDERLAY SUBNET: a host-gw route if the peer is on-link; prints the path.
route_peer() {
    if [[ $(ip route get "$1") == *" via "* ]]; then
        echo udp
    else
        ip route replace "$2" via "$1"
        echo host-gw
    fi
}

# add_peer NAME UNDERLAY SUBNET PATH: appends the peer's JSON to $peers.
add_peer() {
    peers+="${peers:+,}{\"name\":\"$1\",\"underlay\":\"$2\",\"pod_subnet\":\"$3\",\"path\":\"$4\",\"vtep_mac\":\"02:00:00:00:00:01\",\"tx_packets\":0,\"tx_bytes\":0,\"rx_packets\":0,\"rx_bytes\":0,\"drops\":0}"
}

# gossip_peers: $static_peers plus every other live member, into $dir/peers.json. Routes
# are set once per member address and subnet ($routed caches the path).
declare -A routed=()
gossip_peers() {
    local m n u s p
    peers=$static_peers
    for m in "$run"/*/member; do
        [ -e "$m" ] || continue
        read -r n u s p < "$m"
        [ "$n" != "$name" ] && kill -0 "$p" 2>/dev/null || continue
        case ${routed[$n]:-} in
        "$u $s "*) ;;
        *) routed[$n]="$u $s $(route_peer "$u" "$s")" ;;
        esac
        add_peer "$n" "$u" "$s" "${routed[$n]##* }"
    done
    echo "{\"peers\":[$peers],\"rejected\":[],\"drops\":{}}" > "$dir/peers.tmp"
    mv "$dir/peers.tmp" "$dir/peers.json"
}

claim() { # claim CIDR: the first free /24 from .101 up
    local prefix=${1%.*.*} i
    mkdir -p "$run/fake-claims"
    for i in $(seq 101 254); do
        if mkdir "$run/fake-claims/$i" 2>/dev/null; then
            echo "$prefix.$i.0/24"
            return
        fi
    done
    die "every subnet of $1 is taken"
}

cmd=${1:-}; shift || true
case "$cmd" in
run)
    [ "${1:-}" = --config ] || die "usage: run --config FILE"
    config=$2
    sock=$(value daemon control_socket "$config")
    dir=$(dirname "$sock")
    run=$(dirname "$dir")
    name=$(value node name "$config")
    underlay=$(value node underlay_address "$config")
    subnet=$(value node pod_subnet "$config")
    mkdir -p "$dir"
    rm -f "$dir/gossip" "$dir/left"
    if grep -q '^\[gossip\]$' "$config"; then
        key=$(sed -n '/^\[gossip\]/,/^\[/ s/^key_files = \["\([^"]*\)".*/\1/p' "$config")
        [ -f "$key" ] || die "gossip key file $key does not exist"
        [ "$(stat -c %a "$key")" = 600 ] || die "gossip key file $key is not mode 0600"
        grep -qE '^[0-9a-f]{64}$' "$key" || die "gossip key file $key holds no key"
        touch "$dir/gossip"
        if [ -z "$subnet" ]; then
            [ -s "$dir/claim" ] || claim "$(value cluster cidr "$config")" > "$dir/claim"
            subnet=$(cat "$dir/claim")
        fi
    fi
    [ -n "$subnet" ] || die "node.pod_subnet is required without [gossip]"
    base=${subnet%.*}
    echo "$name" > "$dir/name"
    echo "$base" > "$dir/base"
    echo "$subnet" > "$dir/subnet"
    ip link add ovd0 type bridge 2>/dev/null || true
    ip addr replace "$base.1/24" dev ovd0
    ip link set ovd0 up
    peers=""
    while read -r peer peer_underlay peer_subnet; do
        add_peer "$peer" "$peer_underlay" "$peer_subnet" "$(route_peer "$peer_underlay" "$peer_subnet")"
    done < <(awk -F' = ' '/^\[\[peer\]\]/ {p=1; next} /^\[/ {p=0}
        p && $1=="name" {n=$2} p && $1=="underlay_address" {u=$2}
        p && $1=="pod_subnet" {gsub(/"/,"",n); gsub(/"/,"",u); gsub(/"/,"",$2); print n, u, $2}' "$config")
    static_peers=$peers
    echo "{\"peers\":[$peers],\"rejected\":[],\"drops\":{}}" > "$dir/peers.json"
    if [ -e "$dir/gossip" ]; then
        echo "$name $underlay $subnet $$" > "$dir/member.tmp"
        mv "$dir/member.tmp" "$dir/member"
        gossip_peers
    fi
    echo "fake-overlayd: node $name ready" >&2
    touch "$sock"
    trap 'touch "$dir/left"; rm -f "$sock"; exit 0' TERM INT
    while :; do
        sleep 0.2
        [ ! -e "$dir/gossip" ] || gossip_peers
    done
    ;;
status)
    dir=$(socket_dir)
    # Every field of the API's Status (overlayd_proto::api::Status), with made-up values.
    subnet=$(cat "$dir/subnet")
    echo "{\"node\":\"$(cat "$dir/name")\",\"ready\":true,\"underlay_interface\":\"eth0\",\
\"underlay\":\"0.0.0.0\",\"pod_subnet\":\"$subnet\",\"gateway\":\"$(cat "$dir/base").1\",\
\"vtep_mac\":\"02:00:00:00:00:01\",\"tunnel_port\":8472,\"vni\":1,\"tunnel_mtu\":1450,\"pod_mtu\":1500,\
\"peers\":0,\"pods\":0,\"services\":0,\"dns\":{},\"uptime_s\":0,\"drops\":{},\"io\":{}}"
    ;;
peers)
    cat "$(socket_dir)/peers.json"
    ;;
members)
    dir=$(socket_dir)
    [ -e "$dir/gossip" ] || die "this node runs without [gossip]: there are no members"
    me=$(cat "$dir/name")
    out=""
    for m in "$(dirname "$dir")"/*/member; do
        read -r n u s p < "$m"
        heard=0
        if [ "$n" = "$me" ]; then state=alive; heard=null
        elif kill -0 "$p" 2>/dev/null; then state=alive
        elif [ -e "$(dirname "$m")/left" ]; then state=left
        else state=dead
        fi
        out+="${out:+,}{\"name\":\"$n\",\"address\":\"$u:7946\",\"subnet\":\"$s\",\"state\":\"$state\",\"incarnation\":1,\"generation\":$p,\"last_heard_ms\":$heard}"
    done
    echo "{\"members\":[$out]}"
    ;;
service)
    socket_dir > /dev/null
    [ "${1:-}" = list ] || die "only service list is faked"
    echo '{"services":[]}'
    ;;
pod)
    dir=$(socket_dir)
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
    echo "{\"name\":\"$pod\",\"ip\":\"$ip\",\"netns\":\"$netns\",\"netns_owned\":false,\"veth\":\"v$pod\"}"
    ;;
*)
    die "unknown command: $cmd"
    ;;
esac
