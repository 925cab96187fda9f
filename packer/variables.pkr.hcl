# Input variables of the application image template (app.pkr.hcl).
#
# The Python bake step writes all of them into one generated JSON var file
# (`packer build -var-file=vars.json packer/`), so the names here are its contract.
# Works with Packer 1.6.6 (builders built in) and with current Packer once the
# amazon plugin is installed: `packer plugins install github.com/hashicorp/amazon`.

variable "app" {
  type        = string
  description = "Application name (lower-case letters and digits); names /opt/<app> and <app>.service."
}

variable "version" {
  type        = string
  description = "Release version baked into the image; names /opt/<app>/releases/<version>."
}

variable "environment" {
  type        = string
  description = "Environment the image is baked for (recorded in the description and manifest)."
}

variable "base_ami_id" {
  type        = string
  description = "Id of the base image to start from (resolved by the Python side to the newest base image)."
}

variable "instance_type" {
  type        = string
  description = "Instance type of the temporary build instance."
  default     = "t3.micro"
}

variable "region" {
  type        = string
  description = "AWS region to build the image in."
}

variable "ec2_endpoint" {
  type        = string
  description = "Custom EC2 endpoint URL (a local stand-in such as moto); empty means real AWS."
  default     = ""
}

variable "ami_name" {
  type        = string
  description = "Full, unique AMI name, computed by the Python side."
}

variable "tags" {
  type        = map(string)
  description = "Tags put on the AMI and its snapshots (immutable:app, immutable:version, ...)."
  default     = {}
}

variable "release_url" {
  type        = string
  description = "URL of the release tarball the SSH build downloads (real AWS only; may be a presigned URL)."
  default     = ""
  sensitive   = true
}

variable "ssh_username" {
  type        = string
  description = "Login user of the base image (admin on Debian)."
  default     = "admin"
}

variable "subnet_id" {
  type        = string
  description = "Subnet of the build instance; empty means the default VPC chosen by AWS."
  default     = ""
}

variable "associate_public_ip_address" {
  type        = bool
  description = "Give the build instance a public IP so Packer can reach it over SSH from outside the VPC."
  default     = true
}

variable "ssh_interface" {
  type        = string
  description = "How Packer reaches the build instance: public_ip, private_ip, public_dns or private_dns."
  default     = "public_ip"
}

variable "manifest_path" {
  type        = string
  description = "File the manifest post-processor writes the build artifacts (the AMI id) to."
}
