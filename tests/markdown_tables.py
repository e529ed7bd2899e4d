"""Tables of a Markdown text as a GFM viewer sees them (markdown-it-py with its table rule)."""

from markdown_it import MarkdownIt

PARSER = MarkdownIt("commonmark").enable("table")


def gfm_tables(text):
    """Each table of ``text`` as ``(header cells, [row cells, ...])``; text that does not
    render as a table (a header and delimiter that disagree) gives none."""
    tables, table, row, cell = [], None, None, None
    for token in PARSER.parse(text):
        if token.type == "table_open":
            table = ([], [])
        elif token.type == "tr_open":
            row = []
        elif token.type in ("th_open", "td_open"):
            cell = ""
        elif token.type == "inline" and cell is not None:  # the cell's text as rendered
            cell = "".join(child.content for child in token.children or ())
        elif token.type in ("th_close", "td_close"):
            row.append(cell)
            cell = None
        elif token.type == "tr_close":
            (table[0].extend if not table[0] else table[1].append)(row)
        elif token.type == "table_close":
            tables.append(table)
    return tables
