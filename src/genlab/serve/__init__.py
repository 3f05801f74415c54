"""`genlab serve`: an OpenAI-compatible HTTP server for every family (app.py), continuous batching for
language models (engine.py), the served runs (models.py), /metrics (metrics.py) and the web page
(static/index.html)."""
