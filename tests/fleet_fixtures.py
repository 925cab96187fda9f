"""Fixtures that seed a VPC, load balancer, target group and live fleet in moto."""
