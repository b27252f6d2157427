"""Search: finding chunks by their meaning and by their exact words. The entry (`query`: `search()` and its
modes), the dense and lexical sides, Chroma Cloud's sparse index, their fusion, the filter a search applies, hits per
object with the passage that answers.

May import: chroma, chunking, lexicon, records.
"""
