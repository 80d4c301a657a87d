"""kbloop's FAISS store and its LangChain face."""
