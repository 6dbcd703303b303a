#!/bin/sh
# A node container's entry point: a route to the other data centre through the router
# (ROUTE, optional), the daemon, then the pods (PODS, names) each with the lab's pod
# server (TCP/UDP 8080 greeting + echo, HTTP 8081) and the label app=hello. SIGTERM is
# passed to the daemon, which is PID 1's child.
set -eu
if [ -n "${ROUTE:-}" ]; then
    ip route replace $ROUTE
fi
overlayd run --config /etc/overlayd/overlayd.toml &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null' TERM INT
i=0
until overlayd status >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 300 ] || ! kill -0 "$daemon" 2>/dev/null; then
        echo "node.sh: the daemon did not come up" >&2
        exit 1
    fi
    sleep 0.1
done
for pod in ${PODS:-}; do
    # A restarted container finds its pods in the daemon's state: adding again fails, fine.
    overlayd pod add "$pod" --label app=hello >/dev/null 2>&1 || true
    nsenter --net="/run/netns/$pod" overlayd lab serve "$HOSTNAME-$pod" >/dev/null 2>&1 &
done
# A signal interrupts `wait` at once (the trap runs); wait again for the daemon's own exit,
# or PID 1 would end and the kernel would kill the daemon in the middle of its shutdown.
status=0
wait "$daemon" || status=$?
while kill -0 "$daemon" 2>/dev/null; do
    wait "$daemon" || status=$?
done
exit "$status"
