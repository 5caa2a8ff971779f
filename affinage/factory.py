"""Compose the agent from Settings: index, embedder, example bank, chat model, log, and the link policy (by default
the hosts the ingested knowledge base links to, read once here: a new ingest takes effect when the agent is built
again, as the index itself does)."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from affinage.core.chat_model import load_chat_model
from affinage.core.links import allowed_domains
from affinage.core.settings import Settings
from affinage.core.store import Store
from agent.example_bank import ExampleBank
from agent.pipeline import SupportAgent
from retrieval.embeddings import SentenceEmbeddings
from retrieval.index import VectorIndex
from retrieval.retriever import IndexRetriever
from tuning.serving import follow_registry


def build_agent(settings: Settings, llm: BaseChatModel | None = None, embeddings: SentenceEmbeddings | None = None,
                store: Store | None = None) -> SupportAgent:
    embeddings = embeddings or SentenceEmbeddings(settings.embedder)
    index = VectorIndex.open(settings.index_dir)
    if index is not None and index.meta.get("embedder") != embeddings.name:
        raise ValueError(
            f"the index was built with embedder {index.meta.get('embedder')!r} but the settings name {embeddings.name!r}: "
            "run `affinage ingest` again"
        )
    store = store or Store(settings.db_url)
    retriever = IndexRetriever(index=index, embeddings=embeddings, k=settings.top_k)
    watcher = None
    if llm is None:
        llm = load_chat_model(settings)
        watcher = follow_registry(settings, llm)
    policy = allowed_domains(settings.allowed_link_domains, (chunk.text for chunk in index.chunks) if index else ())
    agent = SupportAgent(settings, retriever, llm, store, ExampleBank(store, embeddings), link_domains=policy)
    agent.watcher = watcher
    agent.router = watcher  # while a canary runs, it picks each conversation's model (agent.arms.ArmRouter)
    return agent
