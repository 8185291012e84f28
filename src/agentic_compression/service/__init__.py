"""acf as a service: the HTTP API and the Celery tasks behind it."""
