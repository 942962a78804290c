"""Serving Parley: the uvicorn server and the ASGI middleware around the application."""
