"""The operator console: a server-rendered Starlette app under ``/admin`` (its own Serve application)."""
