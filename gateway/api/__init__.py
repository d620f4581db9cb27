"""HTTP handlers: `tickets` is the old contract, `health` the probes."""
