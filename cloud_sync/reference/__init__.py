"""The reference cloud and its tools for development: cloud-sim, fleet-sim, PKI, broker."""
