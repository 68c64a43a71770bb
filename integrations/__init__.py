"""Bridges to distributed engines (optional extras; nothing here is imported by the runtime)."""
