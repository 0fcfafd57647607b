"""Shared Python environments: validation, building, kernels, drift, and the VM-side sync."""
