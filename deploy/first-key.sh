#!/bin/sh
# The first API key of a fresh deploy. With auth on (deploy/k8s) and R2RANK_API_KEYS empty, every call is a 401
# until a key exists; this makes an admin+rank key inside a running API pod (which holds R2RANK_KEY_SECRET and
# the Redis URL), stores its signed hash in Redis and prints the key once. Keep it in your secret manager;
# make narrower keys the same way afterwards (`r2rank-serve keys add --scopes rank --name <who>`).
#   deploy/first-key.sh k8s [namespace]    (default namespace: r2rank)
#   deploy/first-key.sh compose
set -eu
ADD="r2rank-serve keys add --scopes admin,rank --name first-admin"
case "${1:-}" in
  k8s) exec kubectl -n "${2:-r2rank}" exec deploy/r2rank -c r2rank -- $ADD ;;
  compose) exec docker compose -f "$(dirname "$0")/docker-compose.yml" exec r2rank $ADD ;;
  *) echo "usage: $0 k8s [namespace] | compose" >&2; exit 2 ;;
esac
