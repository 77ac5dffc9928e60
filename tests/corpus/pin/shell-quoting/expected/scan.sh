#!/usr/bin/env bash
# Words made of quoted and unquoted parts: the image is the operand after them.
set -euo pipefail
docker run --rm -v "$PWD":/path -e "KICS_QUEUE=1" checkmarx/kics:alpine@sha256:9ce2ddbb01312088a5cb7a83c795c0213d792cd860faa4821e9b5d5e3f723328 scan -p /path
docker run --rm --name 'kics-'"$RANDOM" "checkmarx/kics:debian@sha256:f070c8c48b358e78962556d1427c616c96d5899891adf9a78ca06adcd2cc2814" scan -p .
