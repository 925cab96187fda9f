# Application image: one AMI per release, tagged so the deployment can find it.
#
# Two sources of the same image:
#   amazon-ebs.aws    real AWS; SSH build instance that runs scripts/ to install the release.
#   amazon-ebs.local  a local stand-in (moto) via var.ec2_endpoint; communicator "none", so no
#                     provisioner may run on it (a remote shell provisioner would hang, and SSH to
#                     moto's fake instance IP never connects). Never build amazon-ebs.aws against moto.
# Select one with `packer build -only=amazon-ebs.aws ...` or `-only=amazon-ebs.local ...`.
#
# Packer 1.6.6 (Debian) has the builders built in: no `packer init`, and no `required_plugins`
# block (a parse error there). Current Packer finds the amazon plugin without that block once
# installed: `packer plugins install github.com/hashicorp/amazon`.

locals {
  # The AMI and its snapshots carry the caller's tags; Name only helps people in the console.
  image_tags = merge({ Name = var.ami_name }, var.tags)
  # Deliberately not the immutable:* tags: a build instance must never look like a fleet member.
  # The janitor DAG finds a killed bake's instance by packer:ami-name (and its app by packer:app);
  # Packer's temporary key pair and security group it finds by their packer_<time uuid> names.
  build_instance_tags = {
    Name                 = "packer-build ${var.ami_name}"
    "packer:ami-name"    = var.ami_name
    "packer:app"         = var.app
    "packer:environment" = var.environment
  }
  ami_description = "${var.app} ${var.version} (${var.environment})"
}

source "amazon-ebs" "aws" {
  region                      = var.region
  custom_endpoint_ec2         = var.ec2_endpoint
  source_ami                  = var.base_ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  associate_public_ip_address = var.associate_public_ip_address

  communicator  = "ssh"
  ssh_username  = var.ssh_username
  ssh_interface = var.ssh_interface
  ssh_timeout   = "10m"

  # IMDSv2 on the build instance: Packer 1.6.6 (Debian 12's) has no way to ask for it; it rejects
  # `metadata_options { http_tokens = "required" }` ("Blocks of type metadata_options are not
  # expected here", checked with packer validate), which later amazon builders accept, and one
  # template serves both. Where it matters, require IMDSv2 outside the template: the account's
  # instance metadata defaults (aws ec2 modify-instance-metadata-defaults --http-tokens required)
  # or a base image registered with ImdsSupport v2.0 (README, "What an instance needs on real
  # AWS"). Nothing in the build reads instance metadata; the fleet's launch template requires
  # IMDSv2, and immutable-fetch-config only uses IMDSv2 tokens.

  ami_name        = var.ami_name
  ami_description = local.ami_description
  tags            = local.image_tags
  snapshot_tags   = local.image_tags
  run_tags        = local.build_instance_tags
  run_volume_tags = local.build_instance_tags
}

source "amazon-ebs" "local" {
  region              = var.region
  custom_endpoint_ec2 = var.ec2_endpoint
  source_ami          = var.base_ami_id
  instance_type       = var.instance_type
  communicator        = "none"

  ami_name        = var.ami_name
  ami_description = local.ami_description
  tags            = local.image_tags
  snapshot_tags   = local.image_tags
  run_tags        = local.build_instance_tags
  run_volume_tags = local.build_instance_tags
}

build {
  sources = ["source.amazon-ebs.aws", "source.amazon-ebs.local"]

  # Every provisioner is restricted to the SSH source: amazon-ebs.local has no communicator.
  # The boot-time units and their fetcher (installed by scripts/install-service.sh from /tmp).
  provisioner "file" {
    only        = ["amazon-ebs.aws"]
    source      = "${path.root}/files/immutable-fetch-config"
    destination = "/tmp/immutable-fetch-config"
  }

  provisioner "file" {
    only        = ["amazon-ebs.aws"]
    source      = "${path.root}/files/app-config.service"
    destination = "/tmp/app-config.service"
  }

  provisioner "file" {
    only        = ["amazon-ebs.aws"]
    source      = "${path.root}/files/app.service"
    destination = "/tmp/app.service"
  }

  provisioner "shell" {
    only            = ["amazon-ebs.aws"]
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "APP=${var.app}",
      "VERSION=${var.version}",
      "RELEASE_URL=${var.release_url}",
    ]
    scripts = [
      "${path.root}/scripts/install-release.sh",
      "${path.root}/scripts/install-service.sh",
      "${path.root}/scripts/cleanup.sh",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      app         = var.app
      version     = var.version
      environment = var.environment
      ami_name    = var.ami_name
    }
  }
}
