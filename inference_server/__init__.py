"""Batched inference: one ROUTER socket, requests from all actors, one forward per batch."""
