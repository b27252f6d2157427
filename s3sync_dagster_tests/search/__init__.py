"""Search: by meaning and by exact words, the passage shown, the Python and command forms, readers, Chroma Cloud, the resident query process."""
