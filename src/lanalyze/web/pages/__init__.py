"""Console pages: one module per area (login, flows, mail), each exporting ``routes``."""
