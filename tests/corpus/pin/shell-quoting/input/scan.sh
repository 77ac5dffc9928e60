#!/usr/bin/env bash
# Words made of quoted and unquoted parts: the image is the operand after them.
set -euo pipefail
docker run --rm -v "$PWD":/path -e "KICS_QUEUE=1" checkmarx/kics:alpine scan -p /path
docker run --rm --name 'kics-'"$RANDOM" "checkmarx/kics:debian" scan -p .
