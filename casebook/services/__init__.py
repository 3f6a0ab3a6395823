"""The domain: every rule of Casebook lives here. Imports neither NiceGUI nor FastAPI."""
