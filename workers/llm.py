"""The LLM worker: ``celery -A workers.llm worker -Q aios.llm`` (or ``aios worker llm``).

One generation at a time per worker (concurrency 1), so that the worker holds no message it cannot start and
broker priorities decide what runs next. The model is loaded when the worker starts, not on the first syscall.
"""

from celery.signals import worker_ready

from aios.kernel import create_worker_app
from aios.llm import LLMService

app = create_worker_app("llm", LLMService, concurrency=1)


@worker_ready.connect
def _load_model(sender: object = None, **_: object) -> None:
    _ = app.aios_runtime.service.backend  # type: ignore[attr-defined]  # building it loads the model
