"""Server groups: one Auto Scaling group and launch template per release."""
