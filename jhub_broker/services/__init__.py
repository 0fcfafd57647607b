"""The broker service: a hub-managed JupyterHub service for shared Python environments.

Run by the hub as ``python -m jhub_broker.services``; add it to a hub config with
:func:`jhub_broker.services.config.service_config`.
"""
