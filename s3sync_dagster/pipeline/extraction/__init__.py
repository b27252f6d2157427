"""Extraction: an object's bytes to text. UTF-8 text here; documents (PDF, Office, OpenDocument, HTML, EPUB,
images) converted to markdown with page marks by docling in a worker pool, OCR by Tesseract, deep HTML read without
docling. docling and torch load only when a document needs them.

May import: nothing of the engine.
"""
