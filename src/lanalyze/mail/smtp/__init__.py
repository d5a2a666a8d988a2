"""The sans-IO SMTP server core: :mod:`.protocol` (the dialogue) and :mod:`.address`."""
