"""Settings of the web console, JSON API and /metrics (section ``[web]``)."""

from __future__ import annotations

from pydantic import Field

from lanalyze.configbase import ListenAddress, Section


class WebConfig(Section):
    enabled: bool = Field(default=True, description="Run the HTTP listener in `lanalyze serve`.")
    listen: ListenAddress = Field(
        default="127.0.0.1:8080", description="Address of the console, the API and /metrics."
    )
