"""Transports that bring meter data into the head-end."""
