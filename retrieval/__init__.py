"""Documents in, citable passages out: loaders, chunking, embeddings, a FAISS index, a LangChain retriever."""
