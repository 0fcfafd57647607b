"""jhub_broker: JupyterHub for research groups on federated research clouds."""
__version__ = "0.1.0"

# the function (see jhub_broker/configure.py); the name shadows the submodule on purpose
from .configure import configure  # noqa: E402

__all__ = ["__version__", "configure"]
