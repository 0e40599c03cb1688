"""Capacity planning for self-hosted GPU pools: `switchyard profile` (measure an endpoint into
a GPU profile) and `switchyard plan` (replicas, utilisation and cost against hosted providers
for a trace)."""
