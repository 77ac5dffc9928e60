 # EsCaPe=`
FROM`
  checkmarx/kics:v2.1.20 AS scan
COPY `
  # a comment inside the continuation
  --from=checkmarx/kics:alpine C:/app/kics.exe C:/kics.exe
