#!/usr/bin/env bash
# Writes the compose topologies' node configs, the gossip key and the QUIC PKI into
# docker/generated/ (not committed: keys are secrets). Run before `docker-compose up`.
#   generated/nN.toml        compose.yml: n1-n4, VXLAN and host-gw only
#   generated/quic/nN.toml   compose.yml + compose.quic.yml: n1-n6 with [quic], n5 and n6
#                            in the zone "remote" that the others reach only over QUIC
#   generated/pki/           the cluster CA (ca.key stays here) and one pair per node
set -euo pipefail
cd "$(dirname "$0")"
out=generated
mkdir -p "$out/quic"
overlayd=${OVERLAYD:-../target/release/overlayd}
umask 077
[[ -s $out/gossip.key ]] || "$overlayd" key generate >"$out/gossip.key"
chmod 600 "$out/gossip.key"
[[ -s $out/pki/ca.pem ]] || "$overlayd" ca init --dir "$out/pki" >/dev/null
umask 022
# name  address       zone    in compose.yml
nodes=(
    "n1 172.28.1.11 dc-a   yes"
    "n2 172.28.1.12 dc-a   yes"
    "n3 172.28.2.11 dc-b   yes"
    "n4 172.28.2.12 dc-b   yes"
    "n5 172.28.3.11 remote no"
    "n6 172.28.3.12 remote no"
)
config() { # NAME ADDRESS ZONE
    cat <<TOML
[node]
name = "$1"
zone = "$3"
underlay_address = "$2"

[cluster]
cidr = "10.244.0.0/16"
name = "compose"
service_cidr = "10.96.0.0/16"

[gossip]
key_files = ["/etc/overlayd/gossip.key"]
seeds = ["172.28.1.11"]

[[service]]
name = "hello"
selector = { app = "hello" }
ports = [{ name = "tcp", port = 80, target_port = 8080 }]
TOML
}
for line in "${nodes[@]}"; do
    read -r name addr zone plain <<<"$line"
    [[ $plain == yes ]] && config "$name" "$addr" "$zone" >"$out/$name.toml"
    # The node's pair is issued once; the key is the node's (0600; the container runs as
    # root and mounts it read-only).
    [[ -s $out/pki/$name.pem ]] || "$overlayd" cert issue "$name" --ca-dir "$out/pki" --out "$out/pki" >/dev/null
    {
        config "$name" "$addr" "$zone"
        cat <<TOML

[quic]
ca = "/etc/overlayd/pki/ca.pem"
cert = "/etc/overlayd/pki/node.pem"
key = "/etc/overlayd/pki/node.key"

# The two data centres keep VXLAN between them (their link is trusted); the remote zone
# is reached only over QUIC, never in clear, not even while QUIC is down.
[[path.zone_pairs]]
zones = ["dc-a", "dc-b"]
allow = ["udp", "quic"]

[[path.zone_pairs]]
zones = ["dc-a", "remote"]
require_encryption = true

[[path.zone_pairs]]
zones = ["dc-b", "remote"]
require_encryption = true
TOML
    } >"$out/quic/$name.toml"
done
echo "wrote $out/{n1..n4}.toml, $out/quic/{n1..n6}.toml, $out/gossip.key and $out/pki/"
