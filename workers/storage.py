"""The storage worker (memory and files): ``celery -A workers.storage worker -Q aios.storage``."""

from aios.services.storage.service import StorageService
from aios.worker.app import create_worker_app

app = create_worker_app("storage", StorageService)
