"""Tests of what an operator deploys: the container image built for real (podman on a Debian base
made with mmdebstrap) and run from its own filesystem, and the Kubernetes manifests rendered and
validated offline."""
