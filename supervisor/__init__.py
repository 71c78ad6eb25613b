"""``python -m supervisor``: start the sidecar and the gateway together, stop them together (``make run``)."""
