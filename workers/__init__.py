"""One Celery worker module per resource: ``celery -A workers.<llm|tool|storage> worker``."""
