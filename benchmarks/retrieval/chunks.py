"""Retrieval quality: does a chunk come back when it is asked for, on real text no one here wrote?

The corpus is Debian's python3.11-doc HTML documentation and the Python 3.11 standard library's
sources, a deterministic sample of each, uploaded to a moto bucket and synced through the real engine
(`throughput.run_engine`, section 1's A) once per token budget into its own embedded Chroma. Then:

1. coverage: every stored chunk is tokenized with the model's own tokenizer; the model reads
   `max_seq_length` tokens (256, [CLS] and [SEP] included) and drops the rest, so we report the share of the
   indexed characters that fall inside that window, the share of chunks longer than it, and chunks
   per MB of source bytes;
2. known-item recall: a probe is one sentence of 8-40 words taken from a sampled chunk (an equal
   number of probes from each third of a chunk, by where the sentence starts); its vector, from the
   same model, queries the collection; a hit at k is a top-k chunk containing the sentence (after
   whitespace normalisation);
3. hybrid search (with the default budget only, `hybrid.py`): dense, lexical and fused rankings on those
   probes and on semantic ones (a function's description in the library reference asking for its
   source; their modules are added to the corpus where the sample lacks them), every fusion variant,
   query latency per mode there and on a synthetic collection of `--latency-chunks` chunks, and what
   Chroma's full-text index (the lexical side's) costs the writes.

A budget of None writes no `max_tokens` key (the source's default chunking; shown as "unset").
`python -m benchmarks.retrieval.chunks WORKDIR [--budgets none,256,128] [--files N] [--probes N] [--semantic N]
[--latency-chunks N]` runs it alone and prints the figures as JSON, then the section.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.retrieval import hybrid, search_cost
from benchmarks.sync import throughput
from s3sync_dagster.pipeline.embedding import EmbeddingSpec, default_token_budget

HTML_ROOT = Path("/usr/share/doc/python3.11/html")  # Debian package python3.11-doc
SYSTEM_PYTHON = "/usr/bin/python3.11"
# Generated link lists (the indexes, the search page): no prose to ask for.
HTML_SKIPPED = re.compile(r"^(genindex.*|py-modindex|search|modindex)\.html$")
PY_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
MIN_BYTES, MAX_BYTES = 200, 200_000  # empty __init__.py files and the few huge pages are left out
SMOKE_MAX_BYTES = 40_000  # --smoke: small files, so a dozen of them sync in seconds
MAX_SIZE_BYTES = 4096  # the source's chunking.max_size_bytes, as the default config has it
BUCKET, SOURCE = "retrieval", "retrieval"
PAGE = 1000  # chunks read from Chroma per call
MIN_WORDS, MAX_WORDS = 8, 40
THIRDS = ("first", "middle", "last")
TARGETS = {"first": 0.85, "middle": 0.75, "last": 0.75}  # recall@5 each third should reach
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")


def stdlib_root() -> Path:
    """The system Python 3.11's standard library (the directory of its `os.__file__`), else ours."""
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import os; print(os.path.dirname(os.__file__))"],
            capture_output=True,
            text=True,
            check=True,
        )
        return Path(done.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path(sysconfig.get_paths()["stdlib"])


def _html_candidates(max_bytes: int) -> list[tuple[str, Path]]:
    if not HTML_ROOT.is_dir():
        raise FileNotFoundError(
            f"{HTML_ROOT} is missing: the retrieval corpus needs Debian's python3.11-doc package "
            "(apt-get install python3.11-doc; scripts/setup installs it)"
        )
    found = []
    for path in HTML_ROOT.rglob("*.html"):
        relative = path.relative_to(HTML_ROOT)
        if relative.parts[0].startswith("_") or HTML_SKIPPED.match(path.name):
            continue
        if MIN_BYTES <= path.stat().st_size <= max_bytes:
            found.append((f"html/{relative.as_posix()}", path))
    return sorted(found)


def _py_candidates(root: Path, max_bytes: int) -> list[tuple[str, Path]]:
    found = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if PY_SKIPPED_DIRS.intersection(relative.parts[:-1]) or not MIN_BYTES <= path.stat().st_size <= max_bytes:
            continue
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few old modules are Latin-1: the engine would refuse them, which is not measured here
        found.append((f"py/{relative.as_posix()}", path))
    return sorted(found)


def select_files(count: int, seed: int = 7, max_bytes: int = MAX_BYTES) -> dict[str, bytes]:
    """`count` files, half documentation pages and half standard-library modules, the same for the same
    arguments on the same Debian release: {object_key: bytes}, keys `html/...` and `py/...`."""
    rng = random.Random(seed)
    html = _html_candidates(max_bytes)
    python = _py_candidates(stdlib_root(), max_bytes)
    chosen = rng.sample(html, min(len(html), count // 2)) + rng.sample(python, min(len(python), count - count // 2))
    return {object_key: path.read_bytes() for object_key, path in sorted(chosen)}


def py_files(max_bytes: int = MAX_BYTES) -> dict[str, Path]:
    """The standard-library files the corpus may take: {object_key: path}."""
    return dict(_py_candidates(stdlib_root(), max_bytes))


def describe(files: dict[str, bytes]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for object_key, body in files.items():
        kind = by_kind.setdefault(_kind(object_key), {"objects": 0, "bytes": 0})
        kind["objects"] += 1
        kind["bytes"] += len(body)
    return {"objects": len(files), "bytes": sum(len(body) for body in files.values()), "by_kind": by_kind}


def _kind(object_key: str) -> str:
    return object_key.split("/", 1)[0]


def normalise(text: str) -> str:
    return " ".join(text.split())


# --- coverage -------------------------------------------------------------------------------------


def model_window() -> int:
    from s3sync_dagster.pipeline.embedding import bundled_model_path

    settings = json.loads((Path(bundled_model_path()) / "sentence_bert_config.json").read_text())
    return int(settings["max_seq_length"])


def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    from s3sync_dagster.pipeline.embedding import bundled_model_path

    tokenizer = Tokenizer.from_file(str(Path(bundled_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def coverage(documents: list[str], window: int) -> list[tuple[int, int]]:
    """Per chunk: (tokens with [CLS] and [SEP], characters the model reads before it truncates)."""
    out = []
    for document, encoding in zip(documents, _tokenizer().encode_batch(documents), strict=True):
        tokens = len(encoding.ids)
        # The last token inside the window is at window - 2 ([CLS] first, [SEP] always last).
        read = len(document) if tokens <= window else encoding.offsets[window - 2][1]
        out.append((tokens, read))
    return out


# --- probes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    chunk_id: str
    object_key: str
    sentence: str  # whitespace-normalised
    third: str  # where the sentence starts in its chunk: first, middle or last


def sentences(text: str) -> Iterator[tuple[int, str]]:
    """(start offset, sentence) for every piece of 8-40 words: split on . ! ? before whitespace, and on
    newlines, so a line of code or of a docstring counts as one when it is long enough."""
    start = 0
    for end_mark in [*SENTENCE_END.finditer(text), None]:
        end = end_mark.start() if end_mark else len(text)
        piece = text[start:end]
        if MIN_WORDS <= len(piece.split()) <= MAX_WORDS:
            yield start + len(piece) - len(piece.lstrip()), normalise(piece)
        if end_mark:
            start = end_mark.end()


def third_of(offset: int, length: int) -> str:
    return THIRDS[min(2, offset * 3 // max(1, length))]


def sample_probes(ids: list[str], documents: list[str], object_keys: list[str], count: int, seed: int) -> list[Probe]:
    """`count` probes from distinct chunks, a third of them (as near as the chunks allow) from each
    third of a chunk; a chunk with no sentence of 8-40 words in a third cannot give that third's probe."""
    rng = random.Random(seed)
    by_third: dict[str, list[tuple[str, str, str, list[str]]]] = {third: [] for third in THIRDS}
    for chunk_id, document, object_key in sorted(zip(ids, documents, object_keys, strict=True)):
        found: dict[str, list[str]] = {}
        for offset, sentence in sentences(document):
            found.setdefault(third_of(offset, len(document)), []).append(sentence)
        for third, candidates in found.items():
            by_third[third].append((chunk_id, object_key, third, candidates))
    probes: list[Probe] = []
    used: set[str] = set()
    # The scarcest third picks first, so it is not starved of chunks the others took.
    for n, third in enumerate(sorted(THIRDS, key=lambda name: len(by_third[name]))):
        wanted = (count - len(probes)) // (len(THIRDS) - n)
        pool = [entry for entry in by_third[third] if entry[0] not in used]
        for chunk_id, object_key, _, candidates in rng.sample(pool, min(wanted, len(pool))):
            probes.append(Probe(chunk_id, object_key, rng.choice(candidates), third))
            used.add(chunk_id)
    return sorted(probes, key=lambda probe: (THIRDS.index(probe.third), probe.chunk_id))


def _rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def recall(probes: list[Probe], top: list[list[str]], normalised: list[str]) -> dict[str, Any]:
    """Recall@1 and @5, overall, by third and by kind; `top` holds each probe's top-5 documents."""
    found = [
        [probe.sentence in normalise(document) for document in documents]
        for probe, documents in zip(probes, top, strict=True)
    ]
    hits1, hits5 = [any(hits[:1]) for hits in found], [any(hits[:5]) for hits in found]
    everything = "\x00".join(normalised)

    def group(members: list[int]) -> dict[str, Any]:
        return {
            "n": len(members),
            "recall_at_1": _rate([hits1[i] for i in members]),
            "recall_at_5": _rate([hits5[i] for i in members]),
        }

    result = group(list(range(len(probes))))
    result["by_third"] = {
        third: group([i for i, probe in enumerate(probes) if probe.third == third]) for third in THIRDS
    }
    kinds = sorted({_kind(probe.object_key) for probe in probes})
    result["by_kind"] = {
        kind: group([i for i, probe in enumerate(probes) if _kind(probe.object_key) == kind]) for kind in kinds
    }
    # Boilerplate (a licence line, a repeated signature) sits in many chunks; any of them is a hit.
    result["sentences_repeated"] = sum(everything.count(probe.sentence) > 1 for probe in probes)
    return result


# --- one budget -----------------------------------------------------------------------------------


def label(budget: int | None) -> str:
    """How a budget is shown: "unset" is no max_tokens key, whatever the chunker does by default."""
    return "unset" if budget is None else str(budget)


def chunking(budget: int | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"type": "tree_sitter", "max_size_bytes": MAX_SIZE_BYTES}
    if budget is not None:
        settings["max_tokens"] = budget
    return settings


def read_chunks(
    chroma_path: Path, collection_name: str, spec: EmbeddingSpec | None = None
) -> tuple[Any, list[str], list[str], list[dict[str, Any]]]:
    """The collection (opened as the engine opens it, so with the store's lexical index, with `spec`'s function,
    the default one's if None) and all its chunks: ids, documents, metadatas."""
    from s3sync_dagster.pipeline.chroma import get_collection
    from s3sync_dagster.pipeline.store import embedded_client

    client = embedded_client(chroma_path)
    try:
        # The engine's own function, as `s3sync query` opens it: hybrid.py's dense side embeds query texts.
        collection = get_collection(client, collection_name, (spec or EmbeddingSpec()).build())  # type: ignore[arg-type]
    except Exception:  # a record of another function (an earlier commit's "before"): queried by vectors only
        collection = client.get_collection(collection_name)
    ids: list[str] = []
    documents: list[str] = []
    metadatas: list[dict[str, Any]] = []
    while True:
        page = collection.get(limit=PAGE, offset=len(ids), include=["documents", "metadatas"])
        if not page["ids"]:
            break
        ids += page["ids"]
        documents += [document or "" for document in page["documents"] or []]
        metadatas += [dict(metadata or {}) for metadata in page["metadatas"] or []]
    return collection, ids, documents, metadatas


def measure_budget(
    endpoint_url: str,
    workdir: Path,
    budget: int | None,
    corpus: dict[str, Any],
    probes: int,
    seed: int,
    before: str | None = None,
    semantic: list[hybrid.SemanticProbe] | None = None,
    latency_chunks: int = search_cost.LARGE_CHUNKS,
    paraphrase: list[hybrid.ParaphraseProbe] | None = None,
) -> dict[str, Any]:
    """One sync of the corpus and its figures; with ``before``, by the engine of that earlier commit; with
    ``semantic`` (probes), the hybrid search figures too, with the ``paraphrase`` probes."""
    name = f"before {before}" if before else label(budget)
    base = workdir / f"budget-{name.replace(' ', '-')}"
    shutil.rmtree(base, ignore_errors=True)  # a store left by an earlier run would make the sync a no-op
    config = common.write_config(
        base / "config.yaml", endpoint_url, BUCKET, base / "chroma", source=SOURCE, chunking=chunking(budget)
    )
    tree = common.snapshot(before, base / "tree") if before else None
    sync = throughput.run_engine(config, tree)
    sync.update(throughput.rates(sync))
    collection, ids, documents, metadatas = read_chunks(base / "chroma", f"{SOURCE}-chunks")
    window = model_window()
    per_chunk = coverage(documents, window)
    characters = sum(len(document) for document in documents)
    tokens = sum(count for count, _ in per_chunk)
    inside_tokens = sum(min(count, window) - 2 for count, _ in per_chunk)
    over = sum(count > window for count, _ in per_chunk)
    result: dict[str, Any] = {
        "label": name,
        "budget": budget,
        "chunking": chunking(budget),
        "sync": sync,
        "chunks": len(ids),
        "chunks_per_mb": len(ids) / (corpus["bytes"] / 1e6),
        "characters": characters,
        "tokens": tokens,
        "share_chars_inside_window": sum(read for _, read in per_chunk) / max(1, characters),
        "share_tokens_inside_window": inside_tokens / max(1, tokens - 2 * len(ids)),  # without [CLS]/[SEP]
        "chunks_over_window": over,
        "share_chunks_over_window": over / max(1, len(ids)),
        "median_tokens": sorted(count for count, _ in per_chunk)[len(per_chunk) // 2] if per_chunk else 0,
        "max_tokens_seen": max((count for count, _ in per_chunk), default=0),
    }
    object_keys = [str(metadata.get("object_key", "")) for metadata in metadatas]
    result["by_kind"] = {}
    for kind, files in corpus["by_kind"].items():
        members = [i for i, object_key in enumerate(object_keys) if _kind(object_key) == kind]
        kind_characters = sum(len(documents[i]) for i in members)
        result["by_kind"][kind] = {
            "chunks": len(members),
            "chunks_per_mb": len(members) / (files["bytes"] / 1e6),
            "share_chars_inside_window": sum(per_chunk[i][1] for i in members) / max(1, kind_characters),
        }
    chosen = sample_probes(ids, documents, object_keys, probes, seed)
    vectors = EmbeddingSpec().build()([probe.sentence for probe in chosen])
    top: list[list[str]] = []
    for start in range(0, len(chosen), 100):
        found = collection.query(query_embeddings=vectors[start : start + 100], n_results=5, include=["documents"])
        top += [[document or "" for document in row] for row in found["documents"] or []]
    result["probes"] = recall(chosen, top, [normalise(document) for document in documents])
    if semantic is not None:
        result["hybrid"] = hybrid.measure(
            collection, base / "chroma", ids, documents, object_keys, chosen, semantic, base, latency_chunks, seed,
            paraphrase or [], config, SOURCE,
        )  # fmt: skip
    return result


def measure_synced(
    workdir: Path, files: int, probes: int, seed: int, semantic: int, max_bytes: int = MAX_BYTES
) -> dict[str, Any]:
    """Section 7's quality figures again on the store a full run synced (`workdir`/budget-unset), by the
    engine as it is now: the same corpus, probes and variants, no sync and no cost figures."""
    corpus = select_files(files, seed, max_bytes)
    semantic_probes, _ = hybrid.choose_semantic(HTML_ROOT, py_files(max_bytes), set(corpus), semantic, seed)
    base = workdir / f"budget-{label(None)}"
    collection, ids, documents, metadatas = read_chunks(base / "chroma", f"{SOURCE}-chunks")
    object_keys = [str(metadata.get("object_key", "")) for metadata in metadatas]
    chosen = sample_probes(ids, documents, object_keys, probes, seed)
    return hybrid.measure(
        collection, base / "chroma", ids, documents, object_keys, chosen, semantic_probes, base,
        seed=seed, paraphrase=hybrid.load_paraphrase(None), costs=False,
    )  # fmt: skip


def fill_corpus(
    endpoint_url: str, files: int, seed: int, max_bytes: int, semantic: int, paraphrase: int | None
) -> tuple[dict[str, Any], list[hybrid.SemanticProbe], list[hybrid.ParaphraseProbe]]:
    """Section 7's corpus in the bucket (`files` sampled files, plus the modules of up to `semantic` semantic
    probes and the pages of `paraphrase` paraphrase probes where the sample lacks them): its description and
    the two probe sets."""
    corpus = select_files(files, seed, max_bytes)
    sampled = len(corpus)
    semantic_probes, added = hybrid.choose_semantic(HTML_ROOT, py_files(max_bytes), set(corpus), semantic, seed)
    paraphrase_probes = hybrid.load_paraphrase(paraphrase)
    for probe in paraphrase_probes:
        if probe.object_key not in corpus and probe.object_key not in added:
            added[probe.object_key] = (HTML_ROOT / probe.page).read_bytes()
    corpus.update(added)
    common.fill_bucket(common.s3_client(endpoint_url), BUCKET, corpus)
    described = describe(corpus)
    described["html_root"], described["stdlib_root"] = str(HTML_ROOT), str(stdlib_root())
    described["sampled"], described["added_for_semantic"] = sampled, sorted(added)
    return described, semantic_probes, paraphrase_probes


def measure(
    endpoint_url: str,
    workdir: Path,
    budgets: list[int | None],
    files: int = 600,
    probes: int = 600,
    seed: int = 7,
    max_bytes: int = MAX_BYTES,
    before: str | None = None,
    semantic: int = hybrid.SEMANTIC_PROBES,
    latency_chunks: int = search_cost.LARGE_CHUNKS,
    paraphrase: int | None = None,
) -> dict[str, Any]:
    """Figures per budget for the same corpus (`files` sampled files, plus the modules of up to `semantic`
    semantic probes and the pages of `paraphrase` paraphrase probes, all of them when None, where the sample
    lacks them), each budget synced into a fresh store; with ``before`` (a git revision), first the same corpus
    by that commit's engine and default chunking. The budget None (unset) also measures hybrid search
    (hybrid.py)."""
    described, semantic_probes, paraphrase_probes = fill_corpus(
        endpoint_url, files, seed, max_bytes, semantic, paraphrase
    )
    return {
        "corpus": described,
        "seed": seed,
        "max_bytes": max_bytes,
        "window": model_window(),
        "targets_recall_at_5": TARGETS,
        "budgets": ([measure_budget(endpoint_url, workdir, None, described, probes, seed, before)] if before else [])
        + [
            measure_budget(
                endpoint_url,
                workdir,
                budget,
                described,
                probes,
                seed,
                None,
                semantic_probes if budget is None else None,
                latency_chunks,
                paraphrase_probes if budget is None else None,
            )
            for budget in budgets
        ],
    }


# --- report ---------------------------------------------------------------------------------------


EMPTY: dict[str, Any] = {"n": 0, "recall_at_1": None, "recall_at_5": None}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _label(run: dict[str, Any]) -> str:
    """A budget's row label; a row carried over from an earlier run is marked with a dagger."""
    name = run.get("label") or label(run["budget"])
    return f"{name} †" if run.get("measured") else name


def section_markdown(result: dict[str, Any]) -> str:
    corpus, window = result["corpus"], result["window"]
    kinds = corpus["by_kind"]
    added = len(corpus.get("added_for_semantic", []))
    runs = [*result["budgets"], *result.get("carried_budgets", [])]
    lines = [
        "## 7. Retrieval quality",
        "",
        f"Real text no one here wrote: {kinds.get('html', {}).get('objects', 0)} pages of Debian's python3.11-doc "
        f"HTML documentation and {kinds.get('py', {}).get('objects', 0)} modules of the Python 3.11 standard "
        f"library ({added} of them added to the sample for the semantic and paraphrase probes below; "
        f"{corpus['bytes'] / 1e6:.1f} MB, up to {result['max_bytes'] // 1000} KB a file, seed {result['seed']}), "
        'synced through the engine (section 1\'s A) once per `chunking.max_tokens` ("unset": no such key, the '
        f"default chunking: {default_token_budget().max_tokens} tokens for this model), each into a fresh embedded "
        'Chroma; "before" is the engine of an earlier commit, byte limits only. '
        f'The model reads {window} tokens including [CLS] and [SEP]; "inside the window" is the share of the '
        "indexed characters it reads before truncating. A probe is a sentence of 8-40 words from a sampled chunk "
        "(split on . ! ? and newlines; a third of the probes from each third of a chunk, by where the sentence "
        "starts), embedded by the same model; a hit at k is a top-k chunk containing it (whitespace normalised).",
        "",
        "| max_tokens | chunks | chunks/MB | text inside window | chunks over window | median tokens | "
        "sync s | objects/s | MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        sync = run["sync"]
        lines.append(
            f"| {_label(run)} | {run['chunks']:,} | {run['chunks_per_mb']:.0f} | "
            f"{_pct(run['share_chars_inside_window'])} | {run['chunks_over_window']:,} "
            f"({_pct(run['share_chunks_over_window'])}) | {run['median_tokens']} | {sync['seconds']:.1f} | "
            f"{sync['objects_s']:.2f} | {sync['mb_s']:.3f} |"
        )
    lines += [
        "",
        "| max_tokens | probes | recall@1 | recall@5 | @5 first third (n) | @5 middle (n) | @5 last third (n) | "
        "@5 html (n) | @5 py (n) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        probes = run["probes"]
        groups = [*probes["by_third"].values(), *(probes["by_kind"].get(kind, EMPTY) for kind in ("html", "py"))]
        cells = [f"{_r(group['recall_at_5'])} ({group['n']})" for group in groups]
        lines.append(
            f"| {_label(run)} | {probes['n']} | {_r(probes['recall_at_1'])} | {_r(probes['recall_at_5'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    origins = sorted({run["measured"] for run in result.get("carried_budgets", [])})
    for origin in origins:
        earlier = next(run["corpus"] for run in result["carried_budgets"] if run["measured"] == origin)
        lines += [
            f"† Carried over from the run of {origin}, on its own corpus ({earlier['objects']} files, "
            f"{earlier['bytes'] / 1e6:.1f} MB: the same seed's sample without the added modules), so not "
            "comparable figure by figure with the rows measured here.",
            "",
        ]
    for run in runs:
        by_third = run["probes"]["by_third"]
        verdicts = [
            f"{third} {_r(by_third[third]['recall_at_5'])} "
            + ("meets" if (by_third[third]["recall_at_5"] or 0) >= target else "misses")
            + f" >= {target:.2f}"
            for third, target in result["targets_recall_at_5"].items()
        ]
        kinds = "; ".join(
            f"{kind}: {figures['chunks']:,} chunks, {figures['chunks_per_mb']:.0f}/MB of source, "
            f"{_pct(figures['share_chars_inside_window'])} of its text inside the window"
            for kind, figures in run["by_kind"].items()
        )
        met = all((by_third[third]["recall_at_5"] or 0) >= target for third, target in TARGETS.items())
        lines.append(
            f"- max_tokens {_label(run)}: targets " + ("met" if met else "not met") + f" ({'; '.join(verdicts)}); "
            f"{run['probes']['sentences_repeated']} of {run['probes']['n']} probe sentences occur more than once "
            f"in the indexed text (any chunk holding one is a hit). By kind, {kinds}."
        )
    for run in result["budgets"]:
        if "hybrid" in run:
            lines += hybrid.section_lines(run["hybrid"])
    return "\n".join(lines)


def parse_budgets(text: str) -> list[int | None]:
    """ "none,256,128" -> [None, 256, 128]."""
    return [
        None if part.strip().lower() in ("none", "unset") else int(part) for part in text.split(",") if part.strip()
    ]


def main() -> None:
    from s3sync_dagster.commands import demo

    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval.chunks", description=__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--budgets", default="none", help="max_tokens per run, 'none' for no budget: none,256,128")
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--probes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="largest file taken into the corpus")
    parser.add_argument("--before", help="a git revision whose engine syncs the corpus first, as 'before'")
    parser.add_argument("--semantic", type=int, default=hybrid.SEMANTIC_PROBES, help="semantic probes drawn")
    parser.add_argument("--paraphrase", type=int, help="paraphrase probes asked (default: all of them)")
    parser.add_argument(
        "--synced",
        action="store_true",
        help="only the hybrid quality figures again, on the store an earlier full run left in WORKDIR",
    )
    parser.add_argument(
        "--latency-chunks",
        type=int,
        default=search_cost.LARGE_CHUNKS,
        help="chunks of the synthetic latency collection",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.synced:
        again = measure_synced(args.workdir, args.files, args.probes, args.seed, args.semantic, args.max_bytes)
        (args.workdir / "hybrid-again.json").write_text(json.dumps(again, indent=2, default=str))
        default = next(row for row in again["variants"] if row["default"])
        print(json.dumps({"modes": again["modes"], "default": default, "winner": again["winner"]}, indent=2))
        return
    common.credentials()
    server = demo.start()
    try:
        result = measure(
            server.endpoint_url,
            args.workdir,
            parse_budgets(args.budgets),
            args.files,
            args.probes,
            args.seed,
            args.max_bytes,
            args.before,
            args.semantic,
            args.latency_chunks,
            args.paraphrase,
        )
    finally:
        server.stop()
    (args.workdir / "retrieval.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    print(section_markdown(result))


if __name__ == "__main__":
    main()
