#!/bin/sh
set -eu
KICS="${KICS_IMAGE:-checkmarx/kics:latest@sha256:73d4d090b30d8f7dd0539364b1877a369a5ee464ee2f8c74bf619729740aa175}"
docker run --rm "$KICS" scan -p .
docker run --rm "${DEBIAN_KICS:-checkmarx/kics:debian@sha256:f070c8c48b358e78962556d1427c616c96d5899891adf9a78ca06adcd2cc2814}" version
