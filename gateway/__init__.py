"""visit-gateway: the old session API for mobile apps, served from the new synchronous methods."""

__version__ = "0.1.0"
