"""jhub_broker: JupyterHub for research groups on federated research clouds."""
__version__ = "0.1.0"
