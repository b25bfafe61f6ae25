"""Example flows, used by `pgflow demo` and the README."""
