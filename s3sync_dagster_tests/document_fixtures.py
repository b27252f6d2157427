"""Document fixtures made on the fly (python-docx, python-pptx, openpyxl, fpdf2, EbookLib, odfpy, Pillow,
LibreOffice for the legacy binary formats): nothing binary is committed."""

import functools
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

SENTENCE = "The quarterly revenue of Zanzibar Widgets grew by eleven percent."
CELL = "Flux-capacitor-42"
IMAGE_TEXT = "Zanzibar Widgets revenue grew"
TABLE = [["part", "code"], ["widget", CELL]]


def _fill(table) -> None:  # type: ignore[no-untyped-def]
    """Write TABLE into a python-docx or python-pptx table (both address cells as .cell(r, c).text)."""
    for r, row in enumerate(TABLE):
        for c, value in enumerate(row):
            table.cell(r, c).text = value


def _html_rows() -> str:
    return "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in TABLE)


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Annual report", 1)
    document.add_paragraph(SENTENCE)
    table = document.add_table(rows=2, cols=2)
    _fill(table)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def pptx_bytes() -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "Slide one"
    first.placeholders[1].text = SENTENCE
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Slide two"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    _fill(table)
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()


def xlsx_bytes(template: bool = False) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sales"
    for row in TABLE:
        sheet.append(row)
    workbook.create_sheet("Notes").append([SENTENCE])
    workbook.template = template
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def csv_bytes() -> bytes:
    return f"part,code,note\nwidget,{CELL},{SENTENCE}\n".encode()


def html_bytes() -> bytes:
    rows = _html_rows()
    return f"<html><body><h1>Report</h1><p>{SENTENCE}</p><table>{rows}</table></body></html>".encode()


def epub_bytes() -> bytes:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("s3sync-fixture")
    book.set_title("Fixture book")
    book.set_language("en")
    rows = _html_rows()
    chapter = epub.EpubHtml(title="Chapter 1", file_name="c1.xhtml", lang="en")
    chapter.content = f"<h1>Chapter 1</h1><p>{SENTENCE}</p><table>{rows}</table>"
    book.add_item(chapter)
    book.toc = (chapter,)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", chapter]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "book.epub"
        epub.write_epub(str(path), book)
        return path.read_bytes()


def _odf_table():  # type: ignore[no-untyped-def]
    from odf.table import Table, TableCell, TableRow
    from odf.text import P

    table = Table(name="Sheet1")
    for row in TABLE:
        table_row = TableRow()
        table.addElement(table_row)
        for value in row:
            cell = TableCell()
            cell.addElement(P(text=value))
            table_row.addElement(cell)
    return table


def _odf_bytes(document) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def odt_bytes() -> bytes:
    from odf.opendocument import OpenDocumentText
    from odf.text import H, P

    document = OpenDocumentText()
    document.text.addElement(H(outlinelevel=1, text="Report"))
    document.text.addElement(P(text=SENTENCE))
    document.text.addElement(_odf_table())
    return _odf_bytes(document)


def ods_bytes() -> bytes:
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import TableCell, TableRow
    from odf.text import P

    document = OpenDocumentSpreadsheet()
    table = _odf_table()
    note_row = TableRow()
    note_cell = TableCell()
    note_cell.addElement(P(text=SENTENCE))
    note_row.addElement(note_cell)
    table.addElement(note_row)
    document.spreadsheet.addElement(table)
    return _odf_bytes(document)


def odp_bytes() -> bytes:
    from odf.draw import Frame, Page, TextBox
    from odf.opendocument import OpenDocumentPresentation
    from odf.style import MasterPage, PageLayout
    from odf.text import P

    document = OpenDocumentPresentation()
    layout = PageLayout(name="layout")
    document.automaticstyles.addElement(layout)
    master = MasterPage(name="master", pagelayoutname=layout)
    document.masterstyles.addElement(master)
    for text in (SENTENCE, f"Part code {CELL}"):
        page = Page(masterpagename=master)
        document.presentation.addElement(page)
        frame = Frame(width="20cm", height="5cm", x="1cm", y="1cm")
        page.addElement(frame)
        box = TextBox()
        frame.addElement(box)
        box.addElement(P(text=text))
    return _odf_bytes(document)


def pdf_bytes(pages: int = 2, password: str | None = None) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "Report")
    pdf.ln(12)
    pdf.multi_cell(0, 8, SENTENCE)
    pdf.ln(4)
    with pdf.table() as table:
        for row in TABLE:
            cells = table.row()
            for value in row:
                cells.cell(value)
    for number in range(2, pages + 1):
        pdf.add_page()
        pdf.cell(0, 10, f"Page {number} is about gravitational lenses.")
    if password:
        pdf.set_encryption(owner_password=password, user_password=password)
    return bytes(pdf.output())


def scanned_pdf_bytes() -> bytes:
    """A PDF whose only page is a picture of text: no text layer."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.image(io.BytesIO(image_bytes("PNG")), x=10, y=10, w=190)
    return bytes(pdf.output())


def image_bytes(fmt: str, text: str | None = IMAGE_TEXT) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (1400, 200), "white")
    if text:
        try:
            font = ImageFont.truetype("DejaVuSans.ttf", 48)
        except OSError:
            font = ImageFont.load_default(size=48)
        ImageDraw.Draw(image).text((30, 60), text, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def libreoffice_convert(data: bytes, source_suffix: str, target: str) -> bytes:
    """Legacy binary formats (.doc, .xls, .ppt) from their modern twins, through LibreOffice."""
    soffice = shutil.which("soffice")
    assert soffice, "LibreOffice is installed by scripts/setup"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"fixture{source_suffix}"
        source.write_bytes(data)
        subprocess.run(
            [soffice, "--headless", f"-env:UserInstallation=file://{folder}/profile", "--convert-to", target,
             "--outdir", folder, str(source)],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        converted = Path(folder) / f"fixture.{target}"
        assert converted.exists(), f"LibreOffice did not convert {source_suffix} to .{target} (is it fully installed?)"
        return converted.read_bytes()


@functools.lru_cache(maxsize=1)
def all_documents() -> dict[str, tuple[bytes, bool]]:
    """suffix -> (bytes, whether the fixture holds the table cell as text)."""
    docx, pptx, xlsx = docx_bytes(), pptx_bytes(), xlsx_bytes()
    return {
        ".pdf": (pdf_bytes(), True),
        ".docx": (docx, True),
        ".doc": (libreoffice_convert(docx, ".docx", "doc"), True),
        ".odt": (odt_bytes(), True),
        ".xlsx": (xlsx, True),
        ".xlsm": (xlsx, True),
        ".xltx": (xlsx_bytes(template=True), True),
        ".xls": (libreoffice_convert(xlsx, ".xlsx", "xls"), True),
        ".csv": (csv_bytes(), True),
        ".ods": (ods_bytes(), True),
        ".pptx": (pptx, True),
        ".ppt": (libreoffice_convert(pptx, ".pptx", "ppt"), True),
        ".odp": (odp_bytes(), True),
        ".html": (html_bytes(), True),
        ".htm": (html_bytes(), True),
        ".epub": (epub_bytes(), True),
        ".png": (image_bytes("PNG"), False),
        ".jpg": (image_bytes("JPEG"), False),
        ".jpeg": (image_bytes("JPEG"), False),
        ".webp": (image_bytes("WEBP"), False),
        ".gif": (image_bytes("GIF"), False),
        ".tiff": (image_bytes("TIFF"), False),
        ".tif": (image_bytes("TIFF"), False),
    }
