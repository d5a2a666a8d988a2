"""Delivery agents: local Maildir now; outbound relay later (relay mail waits in queue/hold)."""
