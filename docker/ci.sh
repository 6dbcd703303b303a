#!/usr/bin/env bash
# The compose topology end to end, as CI runs it: builds the image, generates the configs,
# brings docker/compose.yml up, checks it (docker/check.sh), then the fault steps — a
# stopped node is seen dead by the others and its pods leave the Service; started again
# it has the same pod subnet and pod addresses and every check passes; a restarted node
# container costs the other nodes' pods no traffic — and finally `down -v` leaves no
# container, network or volume behind. Then the remote zone (compose.quic.yml on top):
# every pair reachable, the remote zone's pairs over QUIC with not one VXLAN packet across
# the router to or from it, a restarted remote node back on QUIC; `down -v` again.
# Usage: docker/ci.sh
set -euo pipefail
cd "$(dirname "$0")"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-overlaydci}
files=compose.yml
compose() { COMPOSE_FILE=$files docker-compose "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { echo "== $*"; }

step "image"
./build.sh overlayd:latest
OVERLAYD=../target/release/overlayd ./gen.sh
files=compose.yml:compose.quic.yml cleanup
step "up"
compose up -d
diagnose() { # what every node sees, and its log's tail: a failed wait says why
    local n
    compose ps >&2 || true
    for n in $(compose ps --services --filter status=running 2>/dev/null | grep -v router); do
        echo "--- $n" >&2
        compose exec -T "$n" overlayd members >&2 || true
        compose exec -T "$n" overlayd service get hello >&2 || true
        compose exec -T "$n" overlayd pod list >&2 || true
    done
    compose logs --no-color --tail=40 >&2 || true
}
wait_until() { # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    local deadline=$((SECONDS + limit))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "timed out after $limit s: $what" >&2; diagnose; return 1; }
        sleep 0.5
    done
}
endpoints_are() { # COUNT: n1 sees COUNT endpoints of the Service hello
    [[ $(compose exec -T n1 overlayd service get hello | awk '/endpoints:/ { print $2 }') == "$1" ]]
}
member_gone() { # NAME ON...: every node ON sees member NAME in any state but alive
    local name=$1 on
    shift
    for on in "$@"; do
        compose exec -T "$on" overlayd members | awk -v m="$name" '$1 == m { print $4 }' | grep -qv alive || return 1
    done
}
wait_until 60 "every node up with 8 endpoints of hello" endpoints_are 8
./check.sh compose.yml

step "stop n2: the others see it gone, its pods leave the Service"
before=$(compose exec -T n2 overlayd pod list | awk 'NR > 1 { print $1, $2 }')
subnet=$(compose exec -T n1 overlayd members | awk '$1 == "n2" { print $3 }')
compose stop n2
start=$SECONDS
wait_until 10 "every other node to see n2 gone" member_gone n2 n1 n3 n4
echo "n2 seen gone by n1, n3 and n4 after $((SECONDS - start)) s"
wait_until 10 "hello to lose n2's endpoints" endpoints_are 6

step "start n2: same subnet and pod addresses"
compose start n2
wait_until 60 "n2's endpoints back" endpoints_are 8
after=$(compose exec -T n2 overlayd pod list | awk 'NR > 1 { print $1, $2 }')
[[ $before == "$after" ]] || { echo "n2's pods changed: $before -> $after" >&2; exit 1; }
now=$(compose exec -T n1 overlayd members | awk '$1 == "n2" { print $3 }')
[[ $subnet == "$now" ]] || { echo "n2's subnet changed: $subnet -> $now" >&2; exit 1; }
./check.sh compose.yml

step "restart n2 while n1's pod pings n4's: no loss on the other nodes"
target=$(compose exec -T n4 overlayd pod list | awk '$1 == "p1" { print $2 }')
compose exec -T n1 sh -c "nsenter --net=/run/netns/p1 ping -i 0.1 -c 100 -W 1 $target" >ping.out &
pinger=$!
sleep 1
compose restart n2
wait "$pinger" || true
tail -2 ping.out
grep -q " 0% packet loss" ping.out || { echo "n1 -> n4 lost packets while n2 restarted" >&2; exit 1; }
rm -f ping.out
wait_until 60 "n2's endpoints back" endpoints_are 8
./check.sh compose.yml

down_leaves_nothing() {
    compose down -v --remove-orphans
    local left nets vols label="label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
    left=$(docker ps -a --filter "$label" -q)
    nets=$(docker network ls --filter "$label" -q)
    vols=$(docker volume ls --filter "$label" -q)
    [[ -z $left$nets$vols ]] || { echo "left behind: containers [$left] networks [$nets] volumes [$vols]" >&2; exit 1; }
}
step "down -v leaves nothing"
down_leaves_nothing

step "the remote zone (compose.quic.yml): up"
files=compose.yml:compose.quic.yml
compose up -d
wait_until 90 "every node up with 12 endpoints of hello" endpoints_are 12
# Counters on the router: VXLAN (8472) and QUIC (8473) to and from the remote network.
compose exec -T router nft -f - <<'NFT'
table ip watch {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip saddr 172.28.3.0/24 udp dport 8472 counter comment "vxlan_from_remote"
        ip daddr 172.28.3.0/24 udp dport 8472 counter comment "vxlan_to_remote"
        ip saddr 172.28.3.0/24 udp dport 8473 counter comment "quic_from_remote"
        ip daddr 172.28.3.0/24 udp dport 8473 counter comment "quic_to_remote"
    }
}
NFT
EXPECT_PATHS="host-gw udp quic" ./check.sh "$files"
packets() { # COMMENT: packets the router's counter COMMENT has seen
    compose exec -T router nft list chain ip watch forward |
        awk -v c="\"$1\"" '$0 ~ c { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'
}
for c in vxlan_from_remote vxlan_to_remote quic_from_remote quic_to_remote; do echo "router: $c $(packets $c) packets"; done
[[ $(packets vxlan_from_remote) == 0 && $(packets vxlan_to_remote) == 0 ]] ||
    { echo "VXLAN crossed the router to or from the remote zone" >&2; exit 1; }
(($(packets quic_from_remote) > 0 && $(packets quic_to_remote) > 0)) ||
    { echo "no QUIC crossed the router to and from the remote zone" >&2; exit 1; }

step "restart n5: back on QUIC"
compose restart n5
wait_until 60 "n5's endpoints back" endpoints_are 12
EXPECT_PATHS="quic" ./check.sh "$files"
[[ $(packets vxlan_from_remote) == 0 && $(packets vxlan_to_remote) == 0 ]] ||
    { echo "VXLAN crossed the router to or from the remote zone after the restart" >&2; exit 1; }

step "down -v leaves nothing"
down_leaves_nothing
echo "docker compose topologies: all steps passed"
