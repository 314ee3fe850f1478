#!/bin/sh
# Entrypoint of the skin worker image.
# No arguments: run a Prefect worker on the pool named by SKIN_WORK_POOL (default "local"; a
# missing pool is created as a "process" pool). With arguments: run them instead, e.g.
#   docker compose -f docker/compose.yaml run --rm worker skin --help
set -eu
if [ "$#" -eq 0 ]; then
    set -- prefect worker start --pool "${SKIN_WORK_POOL:-local}"
fi
exec "$@"
