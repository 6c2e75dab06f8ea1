"""Control plane: the Flask application, state in SQLAlchemy, the orchestrator, CLI and SDK."""
