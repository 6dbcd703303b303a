#!/usr/bin/env bash
# Checks a running compose topology from inside its containers: every pod reaches every
# other pod (ping, with the path the source node takes to the destination's node), and
# the Service `hello` answers from a pod on every node by its VIP and by its DNS name.
# Prints one line per check and how many pairs took each path; exits non-zero if any
# fails, or if a path named in EXPECT_PATHS (e.g. "host-gw udp quic") carried no pair.
# Usage: docker/check.sh [COMPOSE_FILE[:OVERRIDE...]]   (default docker/compose.yml)
set -uo pipefail
file=${1:-$(dirname "$0")/compose.yml}
compose() { COMPOSE_FILE=$file docker-compose "$@"; }
in_node() { compose exec -T "$1" sh -c "$2"; }

nodes=$(compose ps --services | grep -E '^n[0-9]+$' | sort)
[[ -n $nodes ]] || { echo "no node containers in $file (is it up?)" >&2; exit 1; }
failed=0
fail() { echo "FAIL $*"; failed=$((failed + 1)); }

# Pods: node pod ip subnet-gateway
declare -a pods=()
for n in $nodes; do
    while read -r name ip; do
        pods+=("$n $name $ip")
    done < <(in_node "$n" "overlayd pod list" | awk 'NR > 1 { print $1, $2 }')
done
echo "pods: ${#pods[@]} on $(echo "$nodes" | wc -w) nodes"
[[ ${#pods[@]} -gt 1 ]] || fail "fewer than two pods"

# The path each node takes to each other node (overlayd peers).
declare -A path=() taken=()
for n in $nodes; do
    while read -r peer p; do
        path["$n>$peer"]=$p
    done < <(in_node "$n" "overlayd peers" | awk 'NR > 1 { print $1, $2 }')
done

for src in "${pods[@]}"; do
    read -r sn sp sip <<<"$src"
    for dst in "${pods[@]}"; do
        read -r dn dp dip <<<"$dst"
        [[ $sn/$sp == "$dn/$dp" ]] && continue
        via=${path["$sn>$dn"]:-local}
        [[ $sn == "$dn" ]] && via=bridge
        if in_node "$sn" "nsenter --net=/run/netns/$sp ping -c 1 -W 2 $dip" >/dev/null 2>&1; then
            echo "ok   $sn/$sp -> $dn/$dp ($dip) via $via"
            taken[$via]=$((${taken[$via]:-0} + 1))
        else
            fail "$sn/$sp -> $dn/$dp ($dip) via $via: no reply"
        fi
    done
done

summary=""
for via in "${!taken[@]}"; do summary+=" $via=${taken[$via]}"; done
echo "pairs by path:$summary"
for want in ${EXPECT_PATHS:-}; do
    ((${taken[$want]:-0} > 0)) || fail "no pair took the path $want"
done

vip=$(in_node "${nodes%%$'\n'*}" "overlayd service get hello" | awk '/address:/ { print $2 }')
[[ -n $vip ]] || fail "the Service hello has no VIP"
for src in "${pods[@]}"; do
    read -r sn sp sip <<<"$src"
    [[ $sp == p1 ]] || continue
    gateway=${sip%.*}.1
    who=$(in_node "$sn" "nsenter --net=/run/netns/$sp sh -c 'echo | nc -w 3 $vip 80'" 2>/dev/null | head -1)
    if [[ -n $who ]]; then
        echo "ok   $sn/$sp -> hello at $vip:80 answered by $who"
    else
        fail "$sn/$sp -> hello at $vip:80: no answer"
    fi
    answer=$(in_node "$sn" "nsenter --net=/run/netns/$sp nslookup hello.default.svc.cluster.local $gateway" 2>/dev/null |
        awk '/^Address/ && !/#53/ { print $2 }' | tail -1)
    if [[ $answer == "$vip" ]]; then
        echo "ok   $sn/$sp -> hello.default.svc.cluster.local is $answer (DNS at $gateway)"
    else
        fail "$sn/$sp -> hello.default.svc.cluster.local: '$answer', expected $vip"
    fi
done

if ((failed > 0)); then
    echo "$failed checks failed"
    exit 1
fi
echo "all checks passed"
