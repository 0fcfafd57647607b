"""Fixtures that start real parts on loopback."""
import pytest

pytest_plugins = ["tests.fixtures.cloud"]
