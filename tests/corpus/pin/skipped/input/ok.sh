docker run --rm checkmarx/kics:latest scan -p .
