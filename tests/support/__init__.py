"""Test-only helpers: throwaway Redis and PostgreSQL servers for the pytest session."""
