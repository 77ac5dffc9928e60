#!/usr/bin/env bash
set -euo pipefail
: "${KICS_FALLBACK_IMAGE:=checkmarx/kics:alpine}"
docker compose --env-file compose/ci.env -f compose/docker-compose.scan.yml run --rm scan
docker run --rm "$KICS_FALLBACK_IMAGE" version
