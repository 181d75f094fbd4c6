"""FHIR XML syntax: a hardened reader into light nodes, and a string writer.

Reading parses with a hardened lxml parser (no DTD, no entity resolution, no
network or file access) and turns the tree into light Nodes in one pass, so
every later lookup is a plain dict read. A narrative ``<div>`` keeps its text as
lines (``narrative_lines``): every block element (``p``, ``div``, ``li``, ``tr``,
headings, …) and ``<br/>`` ends a line, table cells are joined with `` | ``, and
the line breaks and indentation of pretty-printed XHTML become single blanks. Input must be UTF-8, as FHIR requires,
so that any DOCTYPE or entity declaration is seen and refused before parsing
(and once more after, from the parsed document's info). Input is capped at
``MAX_BYTES``; libxml2's own depth limit holds.

Writing builds the XML text directly (``zdbundle``, in FHIR's element order): ``escape``
for attribute values and text nodes, ``optional`` for a primitive that may be absent.
"""

import re

from lxml import etree

from gateway.codecs.sniff import BOM
from gateway.errors import DecodeError

MAX_BYTES = 16 * 1024 * 1024
FHIR = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
_FHIR_TAG = "{%s}" % FHIR
_XHTML_TAG = "{%s}" % XHTML
_FHIR_LEN, _XHTML_LEN = len(_FHIR_TAG), len(_XHTML_TAG)
_ENCODING = re.compile(rb"""(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)""")


_LEAF: dict = {}  # shared by every element without children; never written to


class Node:
    """One element: its FHIR name (XHTML elements keep an ``h:`` prefix), the
    ``value`` and ``url`` attributes, the lines of an XHTML narrative, and
    children by name. Nodes hold no parent link, so a tree is freed without the
    cycle collector."""

    __slots__ = ("name", "value", "url", "lines", "children")

    def __init__(self, name: str, value: str, url: str):
        self.name, self.value, self.url = name, value, url
        self.lines: tuple | list[str] = ()       # filled for an XHTML div only
        self.children: dict[str, list[Node]] = _LEAF

    def all(self, name: str) -> list["Node"]:
        return self.children.get(name, [])



def _node(element) -> Node:
    """Convert an lxml element and its descendants into Nodes (XHTML ``p`` keeps its text)."""
    tag = element.tag
    if tag[:_FHIR_LEN] == _FHIR_TAG:
        name = tag[_FHIR_LEN:]
    elif tag[:_XHTML_LEN] == _XHTML_TAG:
        name = "h:" + tag[_XHTML_LEN:]
    else:
        name = tag
    node = Node(name, element.get("value", ""), element.get("url", "") if name == "extension" else "")
    if name == "h:div":
        node.lines = narrative_lines(element)
    elif len(element):
        children = node.children = {}
        for child in element:
            if isinstance(child.tag, str):
                converted = _node(child)
                found = children.get(converted.name)
                if found is None:
                    children[converted.name] = [converted]
                else:
                    found.append(converted)
    return node


_BLOCKS = {"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "thead",
           "tbody", "tfoot", "blockquote", "dl", "dt", "dd", "caption", "pre"}
_CELLS = {"td", "th"}
_P = _XHTML_TAG + "p"
_BREAKS = re.compile(r"[ \t]*[\r\n\t][ \t\r\n]*")


class _Narrative:
    """Collects the lines of an XHTML narrative (see the module docstring)."""

    def __init__(self):
        self.lines: list[str] = []
        self.line: str | None = None          # None: no line open
        self.fresh = False                    # the open line was opened by a block, still empty

    def text(self, text: str | None) -> None:
        if not text or (not text.strip() and ("\n" in text or self.line is None)):
            return                            # pretty-printing between elements
        self.line, self.fresh = (self.line or "") + text, False

    def close(self, reopen: bool = False, block: bool = False) -> None:
        if self.line is not None and not (self.fresh and block and reopen):
            line = self.line
            self.lines.append(_BREAKS.sub(" ", line).strip(" ") if _BREAKS.search(line) else line)
        self.line, self.fresh = ("", block) if reopen else (None, False)

    def walk(self, element) -> None:
        local = etree.QName(element).localname if isinstance(element.tag, str) else ""
        if local in _BLOCKS or local == "br":
            self.close(reopen=True, block=local in _BLOCKS)
        elif local in _CELLS and self.line:
            self.line, self.fresh = self.line + " | ", False
        if local:
            self.text(element.text)
            for child in element:
                self.walk(child)
        if local in _BLOCKS:
            self.close()
        self.text(element.tail)


def narrative_lines(div) -> list[str]:
    """The lines of an XHTML narrative ``div`` (an lxml element)."""
    if not (div.text or "").strip():          # fast path: only plain <p>s, as we write them
        lines = []
        for child in div:
            text = child.text or ""
            if child.tag != _P or len(child) or (child.tail or "").strip() or _BREAKS.search(text):
                break
            lines.append(text)
        else:
            return lines
    narrative = _Narrative()
    narrative.text(div.text)
    for child in div:
        narrative.walk(child)
    narrative.close()
    return narrative.lines


def hardened_parser() -> etree.XMLParser:
    """An lxml parser with no network, no DTD and no entity resolution."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


_PARSER = hardened_parser()


def read(data: bytes) -> Node:
    """Parse ``data`` into Nodes; raise DecodeError for a DOCTYPE, entities or bad XML."""
    if len(data) > MAX_BYTES:
        raise DecodeError(f"document is larger than {MAX_BYTES} bytes", where="byte 1",
                          code="E-XML-TOO-LARGE")
    declared = _ENCODING.match(data)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4] or (
            declared and declared[1].lower() not in (b"utf-8", b"utf8")):
        raise DecodeError("FHIR XML must be encoded in UTF-8", where="prolog", code="E-XML-ENCODING")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DecodeError("XML with a DOCTYPE or entity declaration is refused", where="prolog",
                          code="E-XML-DOCTYPE")
    try:
        root = etree.fromstring(data.removeprefix(BOM), _PARSER)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else 0
        raise DecodeError(f"not well-formed XML: {exc.msg}", where=f"line {line}",
                          code="E-XML-SYNTAX") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise DecodeError("XML with a DOCTYPE is refused", where="prolog", code="E-XML-DOCTYPE")
    return _node(root)


def get(node: Node | None, path: str) -> Node | None:
    """The first element at ``path`` (names joined by /) below ``node``, or None."""
    for step in path.split("/"):
        if node is None:
            return None
        found = node.children.get(step)
        node = found[0] if found else None
    return node


def val(node: Node | None, path: str = "") -> str:
    """The stripped ``value`` attribute at ``path`` below ``node`` ("" if absent)."""
    found = get(node, path) if path else node
    return found.value.strip() if found is not None else ""


def extension(node: Node | None, url: str) -> Node | None:
    for ext in node.all("extension") if node is not None else ():
        if ext.url == url:
            return ext
    return None


def escape(text: str) -> str:
    """Escape ``text`` for an XML attribute value or text node."""
    if "&" in text or "<" in text or ">" in text or '"' in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        text = text.replace('"', "&quot;")
    return text


def optional(name: str, value: str) -> str:
    """A FHIR primitive ``<name value="…"/>`` when ``value`` is not empty, else nothing."""
    return f'<{name} value="{escape(value)}"/>' if value else ""
