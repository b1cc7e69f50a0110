"""The web app: the FastAPI app factory, routes, the staff console, the chat protocol, settings."""
