"""Chunking: a text cut into chunks (tree-sitter grammars for code and markdown, lines otherwise), each chunk's
context line (key, title, headings or enclosing definitions), and the model's token window they are cut to.

May import: nothing of the engine.
"""
