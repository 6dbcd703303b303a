#!/usr/bin/env bash
# The compose topology end to end, as CI runs it: builds the image, generates the configs,
# brings docker/compose.yml up, checks it (docker/check.sh), then the fault steps — a
# stopped node is seen dead by the others and its pods leave the Service; started again
# it has the same pod subnet and pod addresses and every check passes; a restarted node
# container costs the other nodes' pods no traffic — and finally `down -v` leaves no
# container, network or volume behind. Usage: docker/ci.sh
set -euo pipefail
cd "$(dirname "$0")"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-overlaydci}
compose() { docker-compose -f compose.yml "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { echo "== $*"; }

step "image"
./build.sh overlayd:latest
OVERLAYD=../target/release/overlayd ./gen.sh
cleanup
step "up"
compose up -d
wait_until() { # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    local deadline=$((SECONDS + limit))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "timed out after $limit s: $what" >&2; return 1; }
        sleep 0.5
    done
}
endpoints_are() { # COUNT: n1 sees COUNT endpoints of the Service hello
    [[ $(compose exec -T n1 overlayd service get hello | awk '/endpoints:/ { print $2 }') == "$1" ]]
}
member_gone() { # NAME: n1 sees member NAME in any state but alive
    compose exec -T n1 overlayd members | awk -v m="$1" '$1 == m { print $4 }' | grep -qv alive
}
wait_until 60 "every node up with 8 endpoints of hello" endpoints_are 8
./check.sh compose.yml

step "stop n2: the others see it gone, its pods leave the Service"
before=$(compose exec -T n2 overlayd pod list | awk 'NR > 1 { print $1, $2 }')
subnet=$(compose exec -T n1 overlayd members | awk '$1 == "n2" { print $3 }')
compose stop n2
start=$SECONDS
wait_until 10 "n1 to see n2 gone" member_gone n2
echo "n2 seen gone by n1 after $((SECONDS - start)) s"
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

step "down -v leaves nothing"
compose down -v --remove-orphans
left=$(docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" -q)
nets=$(docker network ls --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" -q)
vols=$(docker volume ls --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" -q)
[[ -z $left$nets$vols ]] || { echo "left behind: containers [$left] networks [$nets] volumes [$vols]" >&2; exit 1; }
echo "docker compose topology: all steps passed"
