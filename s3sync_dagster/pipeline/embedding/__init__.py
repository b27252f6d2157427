"""Embedding: the functions a collection records (Chroma's `default`, `sentence_transformer`, any registered
name), how ours compute (ONNX Runtime or torch, precision), and the bundled model built offline from its weights.

May import: chunking, extras.
"""
