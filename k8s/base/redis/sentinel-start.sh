#!/bin/sh
# Start one Sentinel pod (k8s/base/sentinel.yaml). It monitors the master that its peers (or, on
# the first start, the Redis pods themselves) name, and announces itself by its stable DNS name.
# Sentinel rewrites its config file, so the file lives in a writable emptyDir ($CONF_DIR).
# REDIS_PASSWORD (the Secret's) is both the masters' password (auth-pass) and this sentinel's own
# (requirepass: clients, peers and probes authenticate; sentinels use it with each other too). It
# goes into the config file (mode 600) and to redis-cli as REDISCLI_AUTH, never onto a command line.
#   SELF_HOST SELF_PORT            this sentinel's stable address
#   PEERS                          the sentinels, "host:port host:port ..." (this one may be among them)
#   REDIS_NODES                    the Redis pods, "host:port host:port ..."; the first is the seed master
#   MASTER_NAME QUORUM DOWN_AFTER_MS FAILOVER_TIMEOUT_MS   (SENTINEL_EXTRA_ARGS: more redis-server arguments)
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is empty: set the key 'password' of the Secret rewardserve-redis (docs/deploy.md)}"
MASTER_NAME=${MASTER_NAME:-rewardserve}
master=""
for peer in $PEERS; do  # a running sentinel knows the current master (after any failover)
  [ "$peer" = "$SELF_HOST:$SELF_PORT" ] && continue
  m=$(REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h "${peer%:*}" -p "${peer##*:}" --raw sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null \
      | tr '\n' ' ' | sed 's/ *$//') || m=""
  case "$m" in *" "[0-9]*) master=$m; break ;; esac
done
if [ -z "$master" ]; then  # no peer answers: ask the Redis pods which one is the master
  for node in $REDIS_NODES; do
    if REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h "${node%:*}" -p "${node##*:}" --raw role 2>/dev/null | head -n1 | grep -qx master; then
      master="${node%:*} ${node##*:}"
      break
    fi
  done
fi
if [ -z "$master" ]; then
  first=${REDIS_NODES%% *}
  master="${first%:*} ${first##*:}"
fi
echo "monitoring $master as '$MASTER_NAME'"
umask 077
cat > "$CONF_DIR/sentinel.conf" <<CONF
port $SELF_PORT
dir $CONF_DIR
protected-mode no
requirepass $REDIS_PASSWORD
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF_HOST
sentinel announce-port $SELF_PORT
sentinel monitor $MASTER_NAME $master ${QUORUM:-2}
sentinel auth-pass $MASTER_NAME $REDIS_PASSWORD
sentinel down-after-milliseconds $MASTER_NAME ${DOWN_AFTER_MS:-5000}
sentinel failover-timeout $MASTER_NAME ${FAILOVER_TIMEOUT_MS:-60000}
sentinel parallel-syncs $MASTER_NAME 1
CONF
exec redis-server "$CONF_DIR/sentinel.conf" --sentinel ${SENTINEL_EXTRA_ARGS:-}
