"""Worker side: the Celery app factory, transports, message protocol and the service runtime."""
