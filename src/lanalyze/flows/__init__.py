"""Flows: receive -> decode -> store -> query (NetFlow v5, v9 and IPFIX)."""
