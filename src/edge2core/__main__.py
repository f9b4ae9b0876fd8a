from edge2core.cli import app

app()
