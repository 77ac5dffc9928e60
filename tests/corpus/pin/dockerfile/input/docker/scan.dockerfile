from checkmarx/kics AS kics
FROM scratch
copy --from=kics /app/bin/kics /kics
