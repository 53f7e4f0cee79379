"""The LLM worker: ``celery -A workers.llm worker -Q aios.llm`` (or ``aios worker llm``).

As many threads as the engine decodes sequences (``AIOS_LLM_BATCH_SIZE``): each thread takes a syscall from the
broker, hands it to the batching engine and waits for its result, so the worker keeps taking syscalls while it
decodes and holds no more messages than it can run at once (broker priorities still decide what runs next).
The model is loaded when the worker starts, not on the first syscall.
"""

from celery.signals import worker_ready

from aios.kernel import create_worker_app
from aios.llm import LLMService
from aios.settings import get_settings

app = create_worker_app("llm", LLMService, concurrency=get_settings().llm_batch_size)


@worker_ready.connect
def _load_model(sender: object = None, **_: object) -> None:
    _ = app.aios_runtime.service.backend  # type: ignore[attr-defined]  # building it loads the model
