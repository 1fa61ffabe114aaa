#!/usr/bin/env bash
# A cluster node in plain bash, speaking the barrier line protocol over
# /dev/tcp: run it with `multinode run -n 3 -- bash examples/barrier-child.sh`.
set -eu
exec 3<>"/dev/tcp/${MULTINODE_BARRIER_ADDR%:*}/${MULTINODE_BARRIER_ADDR##*:}"
say() { printf '%s\n' "$1" >&3; }
hear() { IFS= read -r REPLY <&3; REPLY=${REPLY%$'\r'}; }

say "HELLO $MULTINODE_NODE_INDEX"; hear              # WELCOME <id> <nodes>
echo "joined as node $MULTINODE_NODE_INDEX of $MULTINODE_NODES"

say "BARRIER start"; hear                            # OK start
[ "$REPLY" = "OK start" ] || { echo "start: $REPLY" >&2; exit 1; }

# Share something (here a made-up address) and learn everyone's.
say "GATHER addrs 127.0.0.1:$((7000 + MULTINODE_NODE_INDEX))"
while hear && [ "${REPLY%% *}" = VALUE ]; do echo "peer: ${REPLY#VALUE addrs }"; done
[ "$REPLY" = "OK addrs" ] || { echo "addrs: $REPLY" >&2; exit 1; }

say "BARRIER done"; hear
[ "$REPLY" = "OK done" ] || { echo "done: $REPLY" >&2; exit 1; }
say "LEAVE"; hear                                    # BYE
