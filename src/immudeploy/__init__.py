"""Immutable deployments on AWS, orchestrated by Apache Airflow: bake, stage, swap, drain, retire."""

__version__ = "0.1.0"
