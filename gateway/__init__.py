"""visit-gateway: the old session API for mobile apps, served from the new synchronous methods."""

__version__ = "0.1.0"
# What the new API's and the legacy service's operators see in their access logs.
USER_AGENT = f"visit-gateway/{__version__}"
