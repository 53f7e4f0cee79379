"""The storage worker (memory and files): ``celery -A workers.storage worker -Q aios.storage``."""

from aios.worker.app import create_worker_app
from aios.services.storage.service import StorageService

app = create_worker_app("storage", StorageService)
