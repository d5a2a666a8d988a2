"""Settings of the flow collector and store (section ``[flows]``)."""

from __future__ import annotations

from pydantic import Field

from lanalyze.configbase import ListenAddress, Section


class FlowsConfig(Section):
    enabled: bool = Field(default=True, description="Run the flow collector in `lanalyze serve`.")
    listen: list[ListenAddress] = Field(
        default_factory=lambda: ["127.0.0.1:2055"],
        description="UDP addresses to receive NetFlow v5/v9 and IPFIX on (4739 and 9995 are "
        "also common).",
    )
    receive_buffer: int = Field(
        default=64 * 1024 * 1024,
        ge=65536,
        le=2**31 - 1,
        description="Kernel receive buffer per socket in bytes (SO_RCVBUF; raised with "
        "SO_RCVBUFFORCE when running as root).",
    )
