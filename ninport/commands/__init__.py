"""CLI commands that live in their own modules; ``ninport.cli`` loads each only when it is invoked."""
