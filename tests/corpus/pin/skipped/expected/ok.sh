docker run --rm checkmarx/kics:latest@sha256:73d4d090b30d8f7dd0539364b1877a369a5ee464ee2f8c74bf619729740aa175 scan -p .
