"""Turn documentation files (reStructuredText, plain text, Sphinx HTML) into plain English text."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Tags whose whole content is boilerplate, never prose.
_SKIP_TAGS = {"script", "style", "nav", "head", "footer", "header", "noscript", "svg", "form", "button"}
# Sphinx layout blocks around the article: sidebars, breadcrumbs, prev/next links.
_SKIP_CLASSES = {"sphinxsidebar", "related", "footer", "headerlink", "mobile-nav", "sphinxsidebarwrapper"}
_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "li",
    "ul",
    "ol",
    "pre",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "dt",
    "dd",
    "dl",
    "tr",
    "table",
    "br",
    "blockquote",
    "article",
}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "wbr", "col", "area", "base", "source"}


class _TextExtractor(HTMLParser):
    """Collects text outside skipped subtrees; inside `<div role="main">` when the page has one."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.main_parts: list[str] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, starts a skipped subtree, is main)
        self._skip_depth = 0
        self._main_depth = 0  # >0 while inside the role="main" element

    def handle_starttag(self, tag, attrs):
        if tag in _VOID_TAGS:
            if tag == "br":
                self._emit("\n")
            return
        attr = dict(attrs)
        classes = set((attr.get("class") or "").split())
        skip = tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES) or attr.get("role") == "navigation"
        is_main = attr.get("role") == "main"
        self._stack.append((tag, skip, is_main))
        self._skip_depth += skip
        self._main_depth += is_main
        if tag in _BLOCK_TAGS:
            self._emit("\n")

    def handle_endtag(self, tag):
        if tag in _VOID_TAGS:
            return
        # Pop to the matching open tag; tolerates unclosed <p>/<li> as browsers do.
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                for _, skip, is_main in self._stack[i:]:
                    self._skip_depth -= skip
                    self._main_depth -= is_main
                del self._stack[i:]
                break
        if tag in _BLOCK_TAGS:
            self._emit("\n")

    def handle_data(self, data):
        self._emit(data)

    def _emit(self, text: str) -> None:
        if self._skip_depth:
            return
        self.parts.append(text)
        if self._main_depth:
            self.main_parts.append(text)


def html_to_text(html: str) -> str:
    """Visible article text of an HTML page: no scripts, styles, navigation or sidebars."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    chosen = parser.main_parts if "".join(parser.main_parts).strip() else parser.parts
    return normalise_whitespace("".join(chosen))


_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_whitespace(text: str) -> str:
    """Unix newlines, no trailing spaces, runs of spaces collapsed, at most one blank line in a row.

    Leading indentation is kept as a single space level so code and lists stay readable.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00b6", "")
    lines = []
    for line in text.split("\n"):
        stripped = line.rstrip()
        indent = len(stripped) - len(stripped.lstrip())
        body = _SPACES.sub(" ", stripped.strip())
        lines.append((" " * min(indent, 8)) + body if body else "")
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines))
    return text.strip() + "\n" if text.strip() else ""


# GNU info: nodes are separated by a 0x1f byte line; each starts with "File: x.info,  Node: Name,  Next: ...".
_INFO_NODE_HEADER = re.compile(r"^File: [^,]+,\s+Node: ([^,\n]+)")
_INFO_MENU_ENTRY = re.compile(r"^\* [^:]+::|^\* [^:]+: [^.]+\.")


def info_nodes(info: str) -> list[tuple[str, str]]:
    """(node name, cleaned text) for each node of a GNU info file; tag tables and menus are dropped."""
    nodes = []
    for chunk in info.split("\x1f"):
        lines = chunk.lstrip("\n").split("\n")
        header = _INFO_NODE_HEADER.match(lines[0]) if lines else None
        if header is None:  # the preamble, "Tag Table:", "Indirect:", "Local Variables:"
            continue
        body, in_menu = [], False
        for line in lines[1:]:
            if line.startswith("* Menu:"):
                in_menu = True
                continue
            if in_menu and (_INFO_MENU_ENTRY.match(line) or not line.strip() or line.startswith(" ")):
                continue  # menu entries, their wrapped descriptions and the blank lines between groups
            in_menu = False
            body.append(line)
        nodes.append((header.group(1).strip(), normalise_whitespace("\n".join(body))))
    return nodes


_POD_COMMAND = re.compile(r"^=(\w+)\s*(.*)$")
_POD_DROPPED_COMMANDS = {"pod", "cut", "over", "back", "begin", "end", "for", "encoding"}
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_code(match: re.Match) -> str:
    code, inner = match.group(1), match.group(2)
    if code in "XZ":  # index entries and zero-width markers
        return ""
    if code == "E":
        return _POD_ESCAPES.get(inner, chr(int(inner)) if inner.isdigit() else inner)
    if code == "L":  # L<text|target>, L<name/"section">, L<name>
        text = inner.split("|", 1)[0] if "|" in inner else inner
        return text.replace('/"', " ").replace('"', "")
    return inner


_POD_CODE_DOUBLE = re.compile(r"([A-Z])<{2,}\s+(.*?)\s+>{2,}", re.S)
_POD_CODE_SINGLE = re.compile(r"([A-Z])<([^<>]*)>")


def pod_to_text(pod: str) -> str:
    """Plain text of a Perl POD document: headings and items kept as lines, formatting codes unwrapped."""
    out = []
    for line in pod.replace("\r\n", "\n").split("\n"):
        command = _POD_COMMAND.match(line)
        if command is None:
            out.append(line)
        elif command.group(1) not in _POD_DROPPED_COMMANDS:
            out.append(command.group(2))  # =head1 NAME -> NAME, =item * x -> * x
    text = _POD_CODE_DOUBLE.sub(_pod_code, "\n".join(out))
    for _ in range(4):  # nested codes unwrap from the inside out: B<C<x>>
        text = _POD_CODE_SINGLE.sub(_pod_code, text)
    return normalise_whitespace(text)
