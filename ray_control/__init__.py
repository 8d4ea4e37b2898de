"""The Ray control plane: local instances, Ray Job submission, Serve deploys — plain functions."""
