"""ASGI entry point for uvicorn: ``carechart.asgi:app``."""

from carechart.app import create_app

app = create_app()
