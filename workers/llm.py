"""The LLM worker: ``celery -A workers.llm worker -Q aios.llm`` (or ``aios worker llm``).

As many threads as the engine decodes sequences (``AIOS_LLM_BATCH_SIZE``): each thread takes a syscall from the
broker, hands it to the batching engine and waits for its result, so the worker keeps taking syscalls while it
decodes and holds no more messages than it can run at once (broker priorities still decide what runs next).
The model is loaded when the worker starts, not on the first syscall.

With ``AIOS_LLM_CORE=<name>`` (``aios worker llm --core <name>``) it serves that core of ``AIOS_LLM_MODELS`` on
queue ``aios.llm.<name>`` instead of the default core.
"""

from celery.signals import worker_ready

from aios.services.llm.service import LLMService
from aios.settings import for_llm_core, get_settings
from aios.worker.app import create_worker_app

settings = for_llm_core(get_settings())
app = create_worker_app("llm", LLMService, settings=settings, concurrency=settings.llm.batch_size)


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery has no type information
def _load_model(sender: object = None, **_: object) -> None:
    _ = app.aios_runtime.service.backend  # building it loads the model
