subprocess.run(["docker", "run", "checkmarx/kics:latest"])
