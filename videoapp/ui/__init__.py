"""The web UI (``videoapp serve``); :mod:`videoapp.ui.app` composes the pages."""
import os

# Before Gradio is imported anywhere: no telemetry, no version check against the internet.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_SHARE", "False")
