#!/usr/bin/env bash
set -euo pipefail
IMAGE="checkmarx/kics:latest@sha256:73d4d090b30d8f7dd0539364b1877a369a5ee464ee2f8c74bf619729740aa175"
export KICS_ALPINE='checkmarx/kics:alpine@sha256:9ce2ddbb01312088a5cb7a83c795c0213d792cd860faa4821e9b5d5e3f723328'
docker pull checkmarx/kics:latest@sha256:73d4d090b30d8f7dd0539364b1877a369a5ee464ee2f8c74bf619729740aa175
docker run --rm -it \
  --network none \
  -v "$(pwd):/path" \
  checkmarx/kics:v2.1.21@sha256:b27002d403294a1ace6a6cc08d25296adc881173ecdd812016a1cd045a0eb67d scan -p /path
podman run --rm "$IMAGE" version
echo "checkmarx/kics:latest is the scanner"  # prose in an echo
