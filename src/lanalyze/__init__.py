"""lanalyze: NetFlow/IPFIX analytics and an SMTP server that catches forged senders."""

__version__ = "0.1.0"
