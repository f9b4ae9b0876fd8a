"""People signing in to the dashboard: accounts with hashed passwords, server-side sessions
with CSRF tokens, and the roles that decide what a person may do."""
