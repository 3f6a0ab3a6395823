"""The NiceGUI front end: pages call services; nothing here decides a domain rule."""
