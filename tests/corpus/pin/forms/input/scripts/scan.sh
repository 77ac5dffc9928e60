#!/bin/sh
set -eu
KICS="${KICS_IMAGE:-checkmarx/kics:latest}"
docker run --rm "$KICS" scan -p .
docker run --rm "${DEBIAN_KICS:-checkmarx/kics:debian}" version
