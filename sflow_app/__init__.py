"""sFlow application agent for Python."""
