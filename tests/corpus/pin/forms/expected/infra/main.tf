variable "kics_tag" {
  default = "v2.1.20"
}

data "docker_registry_image" "kics" {
  name = "checkmarx/kics:latest@sha256:73d4d090b30d8f7dd0539364b1877a369a5ee464ee2f8c74bf619729740aa175"
}

resource "docker_container" "scanner" {
  name  = "kics"
  image = "checkmarx/kics:alpine@sha256:9ce2ddbb01312088a5cb7a83c795c0213d792cd860faa4821e9b5d5e3f723328" # pulled by the Docker provider
}

resource "kubernetes_cron_job_v1" "scan" {
  metadata {
    name = "kics-nightly"
  }
  spec {
    schedule = "0 3 * * *"
    job_template {
      metadata {}
      spec {
        template {
          metadata {}
          spec {
            container {
              name  = "kics"
              image = "docker.io/checkmarx/kics:${var.kics_tag}"
            }
            init_container {
              name  = "fetch"
              image = "alpine:3.20"
            }
          }
        }
      }
    }
  }
}

resource "docker_registry_image" "app" {
  name = "registry.example.com/team/app:1.0"
}

resource "google_compute_instance" "runner" {
  name = "ci-runner"
  boot_disk {
    initialize_params {
      image = "debian-cloud/debian-12"
    }
  }
}
