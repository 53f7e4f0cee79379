"""The storage worker (memory and files): ``celery -A workers.storage worker -Q aios.storage``."""

import os

from aios.services.storage.service import StorageService
from aios.worker.app import create_worker_app

# Everything this process creates is agents' data: the kernel's own files are 0600 / 0700 explicitly
# (aios.state.private_files), and this umask makes those that Milvus Lite writes as it goes (segments, indexes)
# private too.
os.umask(0o077)
app = create_worker_app("storage", StorageService)
