"""Session stores: `base` defines the interface, `memory` is the default implementation."""
