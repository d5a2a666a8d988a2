"""Mail: accept -> queue -> deliver, with SPF, DKIM and DMARC verdicts."""
