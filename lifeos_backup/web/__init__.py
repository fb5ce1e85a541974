"""The dashboard: web pages over the same catalog, status and health code as the CLI.

See docs/dashboard.md. Starlette, Jinja2, uvicorn and argon2 are imported only here (and by the
commands that serve it or manage its accounts), never by the command tree.
"""
