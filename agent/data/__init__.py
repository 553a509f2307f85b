"""Data shipped with the agent: the default service plan, DTC catalogue and rules."""
