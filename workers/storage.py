"""The storage worker (memory and files): ``celery -A workers.storage worker -Q aios.storage``."""

from aios.kernel import create_worker_app
from aios.storage import StorageService

app = create_worker_app("storage", StorageService)
