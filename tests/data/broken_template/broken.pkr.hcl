# Deliberately broken: an unknown argument in the source block.
source "amazon-ebs" "local" {
  ami_name         = "broken"
  instance_type    = "t3.micro"
  region           = "us-east-1"
  source_ami       = "ami-785db401"
  communicator     = "none"
  no_such_argument = "this is not a valid amazon-ebs setting"
}

build {
  sources = ["source.amazon-ebs.local"]
}
