"""`vist2 serve`: an OpenAI-compatible HTTP server on the engine, and a page that shows compression.

`command` registers the CLI (no web imports); `app` holds the routes (FastAPI), `protocol` the
request checks and response shapes, `worker` the one thread that drives `Engine.step`, and
`metrics` the Prometheus counters. FastAPI and uvicorn come from the `serve` extra.
"""
