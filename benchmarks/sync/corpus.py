"""A deterministic benchmark corpus: source code in several languages, markdown, plain text, HTML, and
a few office documents and PDFs, 100 bytes to 1 MB, sizes skewed small as real buckets are.

`generate(count, seed)` returns {object_key: bytes}; the same arguments always give the same bytes.
"""

from __future__ import annotations

import io
import math
import random
import re
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime

MIN_BYTES, MAX_BYTES = 100, 1024 * 1024
WORDS = [
    "sync",
    "bucket",
    "object",
    "chunk",
    "vector",
    "index",
    "query",
    "embedding",
    "region",
    "prefix",
    "partition",
    "sensor",
    "queue",
    "event",
    "document",
    "table",
    "header",
    "payload",
    "retry",
    "backoff",
    "latency",
    "throughput",
    "cache",
    "shard",
    "replica",
    "lease",
    "token",
    "zebra",
    "harbour",
    "lantern",
    "meadow",
    "copper",
    "violet",
    "saffron",
    "glacier",
    "orchard",
    "falcon",
    "quartz",
    "tundra",
]

# Share of the corpus by kind; documents are few, as in a code/docs bucket, but each is a real file.
KINDS: list[tuple[str, float]] = [
    ("py", 0.20), ("ts", 0.10), ("go", 0.08), ("rs", 0.05), ("java", 0.05),
    ("md", 0.22), ("txt", 0.15), ("html", 0.10),
    ("docx", 0.02), ("xlsx", 0.01), ("pptx", 0.01), ("pdf", 0.01),
]  # fmt: skip
DOCUMENT_KINDS = frozenset({"docx", "xlsx", "pptx", "pdf"})


def _size(rng: random.Random) -> int:
    """Log-normal around 3 KB, clipped to 100 B .. 1 MB: most files small, a long tail of big ones."""
    return int(min(MAX_BYTES, max(MIN_BYTES, math.exp(rng.gauss(math.log(3000), 1.3)))))


def _sentence(rng: random.Random, words: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _fill(rng: random.Random, size: int, unit: Callable[[int], str]) -> str:
    parts, total, n = [], 0, 0
    while total < size:
        part = unit(n)
        parts.append(part)
        total += len(part.encode())
        n += 1
    return "".join(parts)


def _python(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        return (
            f"def {rng.choice(WORDS)}_{n}(value, limit={rng.randint(1, 99)}):\n"
            f'    """{_sentence(rng)}"""\n'
            f"    total = 0\n    for item in range(limit):\n        total += item * value\n"
            f"    return total  # {_sentence(rng, 6)}\n\n\n"
        )

    return '"""' + _sentence(rng) + '"""\n\nimport os\n\n\n' + _fill(rng, size, unit)


def _typescript(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        return (
            f"export function {rng.choice(WORDS)}{n}(value: number): number {{\n"
            f"  // {_sentence(rng)}\n  let total = 0;\n"
            f"  for (let i = 0; i < {rng.randint(2, 50)}; i++) {{ total += i * value; }}\n  return total;\n}}\n\n"
        )

    return _fill(rng, size, unit)


def _go(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        return (
            f"// {rng.choice(WORDS).capitalize()}{n} {_sentence(rng)}\n"
            f"func {rng.choice(WORDS).capitalize()}{n}(value int) int {{\n\ttotal := 0\n"
            f"\tfor i := 0; i < {rng.randint(2, 50)}; i++ {{\n\t\ttotal += i * value\n\t}}\n\treturn total\n}}\n\n"
        )

    return "package bench\n\n" + _fill(rng, size, unit)


def _rust(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        return (
            f"/// {_sentence(rng)}\npub fn {rng.choice(WORDS)}_{n}(value: u64) -> u64 {{\n"
            f"    (0..{rng.randint(2, 50)}).map(|i| i * value).sum()\n}}\n\n"
        )

    return _fill(rng, size, unit)


def _java(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        return (
            f"    /** {_sentence(rng)} */\n    public static int {rng.choice(WORDS)}{n}(int value) {{\n"
            f"        int total = 0;\n        for (int i = 0; i < {rng.randint(2, 50)}; i++) {{ total += i * value; }}\n"
            f"        return total;\n    }}\n\n"
        )

    return "public class Bench {\n" + _fill(rng, size, unit) + "}\n"


def _markdown(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        body = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        extra = f"\n\n- {_sentence(rng, 5)}\n- {_sentence(rng, 5)}" if n % 3 == 0 else ""
        return f"## {rng.choice(WORDS).capitalize()} {n}\n\n{body}{extra}\n\n"

    return f"# {_sentence(rng, 4)}\n\n" + _fill(rng, size, unit)


def _text(rng: random.Random, size: int) -> str:
    return _fill(rng, size, lambda n: " ".join(_sentence(rng) for _ in range(rng.randint(3, 8))) + "\n\n")


def _html(rng: random.Random, size: int) -> str:
    def unit(n: int) -> str:
        return f"<h2>{rng.choice(WORDS)} {n}</h2>\n<p>{_sentence(rng)} {_sentence(rng)}</p>\n"

    return (
        f"<html><head><title>{_sentence(rng, 3)}</title></head><body>\n" + _fill(rng, size, unit) + "</body></html>\n"
    )


FIXED_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def _stable_zip(data: bytes) -> bytes:
    """Office files are zips stamped with the time they were written: pin every stamp."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = source.read(info.filename)
            if info.filename == "docProps/core.xml":
                body = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?", b"2026-01-01T00:00:00Z", body)
            pinned = zipfile.ZipInfo(info.filename, date_time=(2026, 1, 1, 0, 0, 0))
            pinned.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(pinned, body)
    return out.getvalue()


def _docx(rng: random.Random, size: int) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(_sentence(rng, 4), 1)
    for _ in range(max(1, min(size, 200_000) // 400)):
        document.add_paragraph(" ".join(_sentence(rng) for _ in range(3)))
    table = document.add_table(rows=3, cols=2)
    for r in range(3):
        for c in range(2):
            table.cell(r, c).text = rng.choice(WORDS)
    buffer = io.BytesIO()
    document.save(buffer)
    return _stable_zip(buffer.getvalue())


def _xlsx(rng: random.Random, size: int) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["name", "region", "count"])
    for n in range(max(5, min(size, 200_000) // 60)):
        sheet.append([rng.choice(WORDS), rng.choice(WORDS), n])
    buffer = io.BytesIO()
    book.save(buffer)
    return _stable_zip(buffer.getvalue())


def _pptx(rng: random.Random, size: int) -> bytes:
    from pptx import Presentation

    deck = Presentation()
    for _ in range(max(1, min(size, 100_000) // 2000)):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = _sentence(rng, 4)
        slide.placeholders[1].text = " ".join(_sentence(rng) for _ in range(3))
    buffer = io.BytesIO()
    deck.save(buffer)
    return _stable_zip(buffer.getvalue())


def _pdf(rng: random.Random, size: int) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(FIXED_TIME)
    pdf.set_font("Helvetica", size=11)
    for _ in range(max(1, min(size, 200_000) // 3000)):
        pdf.add_page()
        pdf.multi_cell(0, 6, " ".join(_sentence(rng) for _ in range(25)))
    return bytes(pdf.output())


_TEXT_MAKERS: dict[str, Callable[[random.Random, int], str]] = {
    "py": _python, "ts": _typescript, "go": _go, "rs": _rust, "java": _java,
    "md": _markdown, "txt": _text, "html": _html,
}  # fmt: skip
_DOCUMENT_MAKERS: dict[str, Callable[[random.Random, int], bytes]] = {
    "docx": _docx, "xlsx": _xlsx, "pptx": _pptx, "pdf": _pdf,
}  # fmt: skip


def generate(count: int, seed: int = 7, prefix: str = "corpus/") -> dict[str, bytes]:
    """`count` objects, deterministic for (count, seed); at least one of each kind when count >= 12."""
    rng = random.Random(seed)
    kinds = [kind for kind, _ in KINDS]
    weights = [weight for _, weight in KINDS]
    chosen = kinds[:count] + rng.choices(kinds, weights, k=max(0, count - len(kinds)))
    sizes = [_size(rng) for _ in chosen]
    # The ends of the range are always there (but in a tiny smoke corpus): a 100-byte note, a 1 MB source file.
    if count >= 100:
        sizes[chosen.index("txt")] = MIN_BYTES
        sizes[chosen.index("py")] = MAX_BYTES
    corpus: dict[str, bytes] = {}
    for n, (kind, size) in enumerate(zip(chosen, sizes, strict=True)):
        folder = "code" if kind in ("py", "ts", "go", "rs", "java") else "docs"
        key = f"{prefix}{folder}/{n // 1000:03d}/{kind}-{n:06d}.{kind}"
        if kind in _DOCUMENT_MAKERS:
            corpus[key] = _DOCUMENT_MAKERS[kind](rng, size)
        else:
            corpus[key] = _TEXT_MAKERS[kind](rng, size).encode()
    return corpus


def describe(corpus: dict[str, bytes]) -> dict[str, object]:
    by_kind: dict[str, int] = {}
    for key in corpus:
        kind = key.rsplit(".", 1)[-1]
        by_kind[kind] = by_kind.get(kind, 0) + 1
    sizes = sorted(len(body) for body in corpus.values())
    return {
        "objects": len(corpus),
        "bytes": sum(sizes),
        "median_bytes": sizes[len(sizes) // 2] if sizes else 0,
        "max_bytes": sizes[-1] if sizes else 0,
        "by_kind": dict(sorted(by_kind.items())),
    }
