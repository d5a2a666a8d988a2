"""ClickHouse clients from ``[flows.store]``: the one place that turns the settings into a
``clickhouse_driver.Client``.

The password is a ``SecretStr``: it is unwrapped only here, into the client's arguments, and
never appears in a log line or an error message of ours (errors name the servers only).
"""

from __future__ import annotations

from typing import Any

from lanalyze.flows.config import StoreConfig, parse_server

INSERT_SETTINGS = {
    # The Distributed table writes to the shards before the insert returns: an insert that
    # returned is stored (18.16 has no SYSTEM FLUSH DISTRIBUTED), one that raised is replayed.
    "insert_distributed_sync": 1,
}


def servers_text(config: StoreConfig) -> str:
    """The servers as a log field (never the user's password)."""
    return ",".join(config.servers)


def client(config: StoreConfig, server: str | None = None, **settings: Any) -> Any:
    """A client to ``server`` (default: the first of ``flows.store.servers``, failing over to
    the others in order). ``settings`` are ClickHouse/driver settings (``use_numpy``...)."""
    from clickhouse_driver import Client

    names = [server] if server is not None else list(config.servers)
    (host, port), *others = [parse_server(name) for name in names]
    kwargs: dict[str, Any] = {
        "port": port,
        "database": "default",
        "user": config.user,
        "password": config.password.get_secret_value() if config.password else "",
        "connect_timeout": config.connect_timeout,
        "send_receive_timeout": config.insert_timeout,
        "sync_request_timeout": config.connect_timeout,
        "settings": dict(settings),
        "client_name": "lanalyze",
    }
    if others:
        kwargs["alt_hosts"] = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in others)
    if config.tls:
        kwargs["secure"] = True
        kwargs["verify"] = config.tls_verify
        if config.tls_ca:
            kwargs["ca_certs"] = config.tls_ca
    return Client(host, **kwargs)
