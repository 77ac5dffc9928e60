#!/usr/bin/env bash
set -euo pipefail
: "${KICS_FALLBACK_IMAGE:=checkmarx/kics:alpine@sha256:9ce2ddbb01312088a5cb7a83c795c0213d792cd860faa4821e9b5d5e3f723328}"
docker compose --env-file compose/ci.env -f compose/docker-compose.scan.yml run --rm scan
docker run --rm "$KICS_FALLBACK_IMAGE" version
