"""Persistent state: users, organizations, API keys and balances (SQLAlchemy 2)."""
