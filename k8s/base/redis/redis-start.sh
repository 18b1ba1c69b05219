#!/bin/sh
# Start one Redis pod of the StatefulSet as master or replica (k8s/base/redis.yaml).
# Asks the sentinels for the current master first, so a restarted old master comes back as a
# replica of the promoted one (no split brain). Only when no sentinel knows a master (the very
# first start) is SEED_MASTER the master. (Should a stale master still start as one, the Sentinels
# turn it into a replica of the promoted master as soon as they see it.) The password comes from the Secret as REDIS_PASSWORD and
# goes into a config file (mode 600), not onto the command line; the sentinels ask for it too.
#   SELF_HOST SELF_PORT            how the sentinels and replicas reach this pod (its stable DNS name)
#   SEED_MASTER_HOST SEED_MASTER_PORT   the first master (pod 0)
#   SENTINEL_HOST SENTINEL_PORT    the sentinels' Service;  MASTER_NAME  their name for this master
#   MAXMEMORY                      e.g. 768mb: beyond it writes fail (noeviction), nothing is evicted
#   DATA_DIR CONF_DIR              the persistent volume and a writable folder for the config
#   REDIS_EXTRA_ARGS               more redis-server arguments (e.g. --bind 127.0.0.1 in the tests)
set -eu
: "${REDIS_PASSWORD:?REDIS_PASSWORD is empty: set the key 'password' of the Secret rewardserve-redis (docs/deploy.md)}"
MASTER_NAME=${MASTER_NAME:-rewardserve}
master=""
for _ in 1 2 3; do
  master=$(REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h "$SENTINEL_HOST" -p "$SENTINEL_PORT" --raw \
    sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//') || master=""
  case "$master" in *" "[0-9]*) break ;; *) master="" ;; esac
  sleep 1
done
if [ -z "$master" ]; then
  master="$SEED_MASTER_HOST $SEED_MASTER_PORT"
  echo "no sentinel knows a master of '$MASTER_NAME' yet: the seed $master is the master"
else
  echo "the sentinels name $master as the master of '$MASTER_NAME'"
fi
umask 077
{
  echo "port $SELF_PORT"
  echo "dir $DATA_DIR"
  echo "appendonly yes"
  echo "appendfsync everysec"
  echo "save \"\""
  echo "maxmemory $MAXMEMORY"
  echo "maxmemory-policy noeviction"
  echo "protected-mode no"
  echo "replica-announce-ip $SELF_HOST"
  echo "replica-announce-port $SELF_PORT"
  echo "requirepass $REDIS_PASSWORD"
  echo "masterauth $REDIS_PASSWORD"
  if [ "$master" != "$SELF_HOST $SELF_PORT" ]; then echo "replicaof $master"; fi
} > "$CONF_DIR/redis.conf"
exec redis-server "$CONF_DIR/redis.conf" ${REDIS_EXTRA_ARGS:-}
