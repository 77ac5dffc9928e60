variable "kics_tag" {
  default = "v2.1.20"
}

data "docker_registry_image" "kics" {
  name = "checkmarx/kics:latest"
}

resource "docker_container" "scanner" {
  name  = "kics"
  image = "checkmarx/kics:alpine" # pulled by the Docker provider
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
