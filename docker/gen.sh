#!/usr/bin/env bash
# Writes the compose topologies' node configs and the gossip key into docker/generated/
# (not committed: the key is a secret). Run before `docker-compose up`.
set -euo pipefail
cd "$(dirname "$0")"
out=generated
mkdir -p "$out"
overlayd=${OVERLAYD:-../target/release/overlayd}
umask 077
[[ -s $out/gossip.key ]] || "$overlayd" key generate >"$out/gossip.key"
chmod 600 "$out/gossip.key"
umask 022
# name  address       zone
nodes=(
    "n1 172.28.1.11 dc-a"
    "n2 172.28.1.12 dc-a"
    "n3 172.28.2.11 dc-b"
    "n4 172.28.2.12 dc-b"
)
for line in "${nodes[@]}"; do
    read -r name addr zone <<<"$line"
    cat >"$out/$name.toml" <<TOML
[node]
name = "$name"
zone = "$zone"
underlay_address = "$addr"

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
done
echo "wrote $out/{n1,n2,n3,n4}.toml and $out/gossip.key"
