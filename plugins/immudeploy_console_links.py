"""Airflow plugin: registers immudeploy's AWS console links (image, Auto Scaling group, target group)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from immudeploy.airflow.links import ImageLink, ServerGroupLink, TargetGroupLink


class ImmudeployConsoleLinksPlugin(AirflowPlugin):
    """The links are computed in the worker when a task ends; registering them lets the UI list them."""

    name = "immudeploy_console_links"
    operator_extra_links = [ImageLink(), ServerGroupLink(), TargetGroupLink()]
