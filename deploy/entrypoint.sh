#!/bin/sh
# Container entrypoint of a wrongbook StatefulSet pod: derives this process's index from the pod
# ordinal (wrongbook-2 → process 2), writes the hostfile of all REPLICAS pods from the headless
# Service's stable DNS names, and runs `wrongbook run` in cluster mode.
#
# Environment: REPLICAS (processes of the job), SERVICE (the headless Service), NAMESPACE,
# CLUSTER_PORT (timely's port, default 2101), WORKERS (threads per process, default 2),
# CONFIG (default /etc/wrongbook/wrongbook.toml), HOSTFILE (default /tmp/wrongbook-hosts),
# WRONGBOOK (the binary, default wrongbook). With DRY_RUN=1 it prints the command instead.
set -eu

name=${POD_NAME:-$(hostname)}
ordinal=${name##*-}
case "$ordinal" in
  ''|*[!0-9]*) echo "entrypoint: cannot read a pod ordinal from '$name' (expected NAME-N)" >&2; exit 2 ;;
esac
replicas=${REPLICAS:?set REPLICAS to the StatefulSet replicas}
if [ "$ordinal" -ge "$replicas" ]; then
  echo "entrypoint: pod ordinal $ordinal is not below REPLICAS=$replicas" >&2
  exit 2
fi
set_name=${name%-*}
service=${SERVICE:?set SERVICE to the headless Service}
namespace=${NAMESPACE:-default}
port=${CLUSTER_PORT:-2101}
hostfile=${HOSTFILE:-/tmp/wrongbook-hosts}

: > "$hostfile"
i=0
while [ "$i" -lt "$replicas" ]; do
  echo "$set_name-$i.$service.$namespace.svc.cluster.local:$port" >> "$hostfile"
  i=$((i + 1))
done

set -- "${WRONGBOOK:-wrongbook}" --log-format json run -c "${CONFIG:-/etc/wrongbook/wrongbook.toml}" \
  -w "${WORKERS:-2}" -n "$replicas" -p "$ordinal" -h "$hostfile"
if [ "${DRY_RUN:-0}" = "1" ]; then
  echo "$@"
  exit 0
fi
exec "$@"
