"""Markdown (GitHub-flavoured) tables built from one list of columns.

A table is a list of ``(header, cell)`` pairs, ``cell`` a function of one row giving its text,
so the header, the delimiter row and every body row have the same number of cells by
construction, and a ``|`` or a line break inside a cell cannot split or end a row.
"""


def escape_cell(value):
    """Text of one cell: ``|`` escaped, line breaks as spaces, empty as ``-``."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|") or "-"


def markdown_table(columns, rows):
    """The lines of a GFM table: ``columns`` are ``(header, cell)`` pairs, ``cell(row)`` a cell's text."""
    headers = [escape_cell(header) for header, _ in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(escape_cell(cell(row)) for _, cell in columns) + " |")
    return lines
