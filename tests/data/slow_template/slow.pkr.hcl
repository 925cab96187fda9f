# A build that never finishes on its own: a local provisioner that sleeps. Used by the timeout tests.
variable "ec2_endpoint" {
  type = string
}

variable "base_ami_id" {
  type = string
}

variable "ami_name" {
  type = string
}

source "amazon-ebs" "local" {
  ami_name            = var.ami_name
  instance_type       = "t3.micro"
  region              = "us-east-1"
  source_ami          = var.base_ami_id
  communicator        = "none"
  custom_endpoint_ec2 = var.ec2_endpoint
}

build {
  sources = ["source.amazon-ebs.local"]

  provisioner "shell-local" {
    inline = ["sleep 300"]
  }
}
