"""Settings of the mail server (section ``[mail]``)."""

from __future__ import annotations

from pydantic import Field

from lanalyze.configbase import ListenAddress, Section
from lanalyze.mail.auth.config import AuthConfig


class MailConfig(Section):
    enabled: bool = Field(default=True, description="Run the SMTP server in `lanalyze serve`.")
    listen: list[ListenAddress] = Field(
        default_factory=lambda: ["127.0.0.1:2525"],
        description="Addresses of the MTA listener (port 25 in production).",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="Sender checks (SPF, DKIM, DMARC, ARC), their policy and DKIM signing.",
    )
