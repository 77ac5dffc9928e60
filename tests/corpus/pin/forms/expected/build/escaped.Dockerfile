 # EsCaPe=`
FROM`
  checkmarx/kics:v2.1.20@sha256:6576d4a622226e7053e58cf9dd36b3903135d734c40d6c15d77e696575ee2d39 AS scan
COPY `
  # a comment inside the continuation
  --from=checkmarx/kics:alpine@sha256:9ce2ddbb01312088a5cb7a83c795c0213d792cd860faa4821e9b5d5e3f723328 C:/app/kics.exe C:/kics.exe
