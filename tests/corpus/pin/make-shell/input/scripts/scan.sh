#!/usr/bin/env bash
set -euo pipefail
IMAGE="checkmarx/kics:latest"
export KICS_ALPINE='checkmarx/kics:alpine'
docker pull checkmarx/kics
docker run --rm -it \
  --network none \
  -v "$(pwd):/path" \
  checkmarx/kics:v2.1.21 scan -p /path
podman run --rm "$IMAGE" version
echo "checkmarx/kics:latest is the scanner"  # prose in an echo
