"""The documents tell the truth about the code.

- Every relative link of README.md and docs/*.md points to a file that exists (and, for a
  link into a Markdown file with a #fragment, to a heading that exists there).
- Every rule id the code knows (``calguard.config.schema.RULES``) has a row in the rule
  table of docs/clinical-reference.md, and that row gives the built-in library's priority
  (both levels for a two-level rule), its default settings, its kind (config/schema.py:
  clinical or technical) and its alarm category (alerts/alarms.py). A rule added to the
  code without a row fails here: that is intended.
- Every NE-1000 byte example of docs/protocols.md section 1 frames, encodes and decodes
  with the driver's own code (``calguard.drivers.ne1000``), and every fact its row states
  (pump address, status, alarm, rate, volume, error, length, CRC) is what the driver reads.

Tolerant of formatting (column order, spacing, case, how a quantity's unit is spelt),
strict on facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from calguard.alerts.alarms import category
from calguard.config import PRIORITIES, RULES, Library, load_library
from calguard.drivers.ne1000 import (
    STATUSES,
    FrameParser,
    Garbage,
    crc16_xmodem,
    encode_basic_command,
    encode_safe_packet,
    parse_response,
    parse_volume,
)
from calguard.monitor import units
from calguard.monitor.errors import QuantityError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLINICAL = DOCS / "clinical-reference.md"
PROTOCOLS = DOCS / "protocols.md"
REQUIRED_DOCS = ("README.md", "clinical-reference.md", "event-format.md", "protocols.md")


# -- reading Markdown ------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _lines_outside_fences(text: str) -> list[str]:
    """The lines of a Markdown text with fenced code blocks blanked out."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return out


def _headings(text: str) -> list[tuple[int, str]]:
    found = []
    for line in _lines_outside_fences(text):
        m = _HEADING.match(line)
        if m:
            found.append((len(m[1]), m[2]))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: text lower-cased, punctuation dropped, spaces to -."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _level, heading in _headings(text):
        base = _slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchors.add(base if n == 0 else f"{base}-{n}")
    anchors |= set(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", text))
    return anchors


def _section(text: str, title: re.Pattern[str]) -> str:
    """The text under the first heading matching ``title``, up to the next heading of the
    same or a higher level ("" when there is no such heading)."""
    lines = text.splitlines()
    masked = _lines_outside_fences(text)
    start = level = None
    for i, line in enumerate(masked):
        m = _HEADING.match(line)
        if not m:
            continue
        if start is None and title.search(m[2]):
            start, level = i + 1, len(m[1])
        elif start is not None and level is not None and len(m[1]) <= level:
            return "\n".join(lines[start:i])
    return "" if start is None else "\n".join(lines[start:])


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", body)]


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table outside code fences: its rows as {lower-case header: cell}."""
    tables, block = [], []
    for line in [*_lines_outside_fences(text), ""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and re.fullmatch(r"[\s|:\-]+", block[1]):
            header = [h.lower() for h in _cells(block[0])]
            tables.append([dict(zip(header, _cells(row), strict=False)) for row in block[2:]])
        block = []
    return tables


def _column(row: dict[str, str], *words: str) -> str | None:
    """The cell of the first column whose header contains one of ``words``."""
    for header, cell in row.items():
        if any(word in header for word in words):
            return cell
    return None


# -- (a) links -----------------------------------------------------------------------------------

DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
_INLINE_CODE = re.compile(r"(`+).*?\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[^)]*)?\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.\-]*:|//)")


def _links(path: Path) -> list[str]:
    targets = []
    for line in _lines_outside_fences(path.read_text("utf-8")):
        line = _INLINE_CODE.sub("", line)
        targets += _INLINE_LINK.findall(line)
        ref = _REF_LINK.match(line)
        if ref:
            targets.append(ref[1])
    return [t for t in targets if t and not _EXTERNAL.match(t)]


def test_the_documents_exist() -> None:
    missing = [name for name in REQUIRED_DOCS if not (DOCS / name).is_file()]
    assert not missing, f"docs/ lacks {missing}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        path_part, _, fragment = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
            continue
        if ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target}: outside the repository")
            continue
        anchors = _anchors(resolved.read_text("utf-8")) if resolved.suffix == ".md" else None
        if fragment and anchors is not None and fragment.lower() not in anchors:
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(broken)


def test_the_anchor_rule_is_githubs() -> None:
    assert _slug("1. New Era NE-500 / NE-1000 syringe pumps (RS-232)") == (
        "1-new-era-ne-500--ne-1000-syringe-pumps-rs-232"
    )
    assert _slug("3.3 The alarm sink's side") == "33-the-alarm-sinks-side"
    assert _anchors("## Tests\n```\n## not a heading\n```\n## Tests\n") == {"tests", "tests-1"}


# -- (b) the rule table --------------------------------------------------------------------------

_RULE_ID = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def _rule_rows() -> dict[str, dict[str, str]]:
    """The rows of the rule table of the clinical reference, by rule id."""
    if not CLINICAL.is_file():
        return {}
    section = _section(CLINICAL.read_text("utf-8"), re.compile(r"rule table", re.IGNORECASE))
    rows: dict[str, dict[str, str]] = {}
    for table in _tables(section):
        for row in table:
            cell = _column(row, "rule")
            if cell is None:
                continue
            name = cell.replace("`", "").strip()
            if _RULE_ID.fullmatch(name):
                rows[name] = row
    return rows


@pytest.fixture(scope="module")
def rule_rows() -> dict[str, dict[str, str]]:
    rows = _rule_rows()
    assert rows, f"{CLINICAL.relative_to(ROOT)} has no rule table (a section named 'Rule table')"
    return rows


@pytest.fixture(scope="module")
def builtin() -> Library:
    """The built-in drug library (config/default_library.toml)."""
    return load_library()


def _levels(rule_id: str, library: Library) -> set[str]:
    """The built-in priority of a rule; both levels of a two-level rule, from the names of
    its settings (continuous_medium, high_after, the class list named high ...)."""
    cfg = library.rule(rule_id)
    if cfg.priority is not None:
        return {cfg.priority}
    keys = [*cfg.quantities, *cfg.ints, *cfg.class_lists]
    return {p for p in PRIORITIES for key in keys if p in key.split("_")}


def _quantities_in(text: str, kind: units.Kind) -> list[float]:
    """Every "<number> <unit>" in a text that is a quantity of ``kind``, canonical."""
    found = []
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+(?:/[A-Za-z]+)*)", text):
        try:
            found.append(units.parse_quantity(f"{number} {unit}", kind))
        except QuantityError:
            continue
    return found


def test_the_rule_table_names_no_rule_the_code_does_not_know(
    rule_rows: dict[str, dict[str, str]],
) -> None:
    unknown = sorted(set(rule_rows) - set(RULES))
    assert not unknown, f"the rule table documents rules the code does not know: {unknown}"


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_every_rule_is_in_the_table_with_its_built_in_defaults(
    rule_id: str, rule_rows: dict[str, dict[str, str]], builtin: Library
) -> None:
    row = rule_rows.get(rule_id)
    assert row is not None, (
        f"rule {rule_id!r} is known to the code (config/schema.py) but has no row in the "
        f"rule table of {CLINICAL.relative_to(ROOT)}: add one (what fires it, its default, "
        "its priority, its kind, its source)"
    )
    priority = _column(row, "priority")
    assert priority is not None, "the rule table has no priority column"
    written = set(re.findall(r"\b(high|medium|low)\b", priority.lower()))
    expected = _levels(rule_id, builtin)
    assert expected, f"cannot tell the priority levels of {rule_id} from the built-in library"
    assert written == expected, (
        f"{rule_id}: the rule table says priority {priority!r}; "
        f"the built-in library has {sorted(expected)}"
    )

    default = _column(row, "default")
    assert default is not None, "the rule table has no default column"
    cfg = builtin.rule(rule_id)
    for key, q in cfg.quantities.items():
        values = _quantities_in(default, q.kind)
        assert any(abs(v - q.value) <= 1e-9 * max(abs(q.value), 1.0) for v in values), (
            f"{rule_id}: the default {key} = {q.text!r} of the built-in library is not in the "
            f"rule table's default {default!r}"
        )
    for key, number in cfg.ints.items():
        assert re.search(rf"(?<![\d.]){number}(?![\d.])", default), (
            f"{rule_id}: the default {key} = {number} is not in the rule table's {default!r}"
        )
    for key, classes in cfg.class_lists.items():
        absent = [c for c in classes if not re.search(rf"\b{c}\b", default.lower())]
        assert not absent, f"{rule_id}: {key} classes {absent} are not in {default!r}"

    kind = _column(row, "kind")
    assert kind is not None, "the rule table has no kind column (clinical or technical)"
    expected_kind = "technical" if RULES[rule_id].technical else "clinical"
    assert _kinds(kind) == {expected_kind}, (
        f"{rule_id}: the rule table's kind is {kind!r}; config/schema.py says {expected_kind}"
    )
    alarm_category = _column(row, "category")
    assert alarm_category is not None, "the rule table has no alarm category column"
    assert _kinds(alarm_category) == {category(rule_id)}, (
        f"{rule_id}: the rule table's alarm category is {alarm_category!r}; "
        f"alerts/alarms.py says {category(rule_id)}"
    )


def _kinds(cell: str) -> set[str]:
    return set(re.findall(r"\b(clinical|technical)\b", cell.lower()))


# -- (c) NE-1000 byte examples -------------------------------------------------------------------

_HEX_RUN = re.compile(r"(?:0x)?[0-9A-Fa-f]{2}(?:[ ,]+(?:0x)?[0-9A-Fa-f]{2})+")
_MANUAL_EXAMPLE = bytes.fromhex("02 08 53 41 46 30 55 43 03")  # SAF0, CRC 0x5543 (1200-01 §10)


def _hex(text: str) -> bytes:
    return bytes(int(pair, 16) for pair in re.findall(r"(?:0x)?([0-9A-Fa-f]{2})", text))


def _serial_section() -> str:
    if not PROTOCOLS.is_file():
        return ""
    return _section(PROTOCOLS.read_text("utf-8"), re.compile(r"NE-1000"))


@dataclass(frozen=True)
class Example:
    data: bytes
    safe: bool
    to_pump: bool
    text: str
    meaning: str

    def __str__(self) -> str:
        return " ".join(f"{b:02X}" for b in self.data)


def _examples() -> list[Example]:
    examples = []
    for table in _tables(_serial_section()):
        for row in table:
            cells = [
                _column(row, "bytes"),
                _column(row, "mode"),
                _column(row, "direction"),
                _column(row, "text"),
                _column(row, "meaning"),
            ]
            if any(cell is None for cell in cells):
                continue
            data, mode, direction, text, meaning = (str(cell) for cell in cells)
            code = re.findall(r"`([^`]*)`", data)
            if not code or not _HEX_RUN.fullmatch(code[0].strip()):
                continue
            span = re.search(r"`([^`]*)`", text)
            examples.append(
                Example(
                    _hex(code[0]),
                    "safe" in mode.lower(),
                    "to" in direction.lower().split(),
                    span[1] if span else text.strip(),
                    meaning.lower(),
                )
            )
    return examples


EXAMPLES = _examples()


def test_the_serial_section_has_verified_byte_examples_of_every_kind() -> None:
    assert EXAMPLES, (
        f"{PROTOCOLS.relative_to(ROOT)} section 1 has no byte-example table "
        "(columns: bytes, mode, direction, text, meaning)"
    )
    kinds = {(e.safe, e.to_pump) for e in EXAMPLES}
    assert kinds == {(False, True), (False, False), (True, True), (True, False)}, (
        "examples of basic and safe mode, to and from the pump, are expected"
    )
    assert any(e.data == _MANUAL_EXAMPLE for e in EXAMPLES), "the manual's SAF0 packet"
    assert any("crc error" in e.meaning for e in EXAMPLES), "an example of a CRC error"


def test_every_byte_sequence_in_the_serial_section_is_a_verified_example() -> None:
    """A hex example written in prose would escape the checks below: none may."""
    verified = {e.data for e in EXAMPLES}
    section = _serial_section()
    spans = re.findall(r"`([^`\n]+)`", section)
    fenced = [line for line in section.splitlines() if _HEX_RUN.fullmatch(line.strip())]
    written = [_hex(s) for s in [*spans, *fenced] if _HEX_RUN.fullmatch(s.strip())]
    unverified = [w.hex(" ").upper() for w in written if w not in verified]
    assert not unverified, f"byte sequences outside the example table: {unverified}"


def _fact(pattern: str, meaning: str) -> str | None:
    m = re.search(pattern, meaning)
    return None if m is None else " ".join(g for g in m.groups() if g)


def _check_safe_packet(e: Example) -> None:
    text = e.text.encode("ascii")
    crc = _fact(r"\bcrc 0x([0-9a-f]{4})\b", e.meaning)
    assert crc is not None, f"{e}: a safe-mode example states its CRC (CRC 0x....)"
    length = _fact(r"\blength (\d+)\b", e.meaning)
    if length is not None:
        assert int(length) == e.data[1], f"{e}: the length byte is {e.data[1]}, not {length}"
    assert e.data[2:-3] == text, f"{e}: the packet's text is {e.data[2:-3]!r}, not {text!r}"
    frames = FrameParser(safe=True).feed(e.data)
    if "crc error" in e.meaning:
        assert len(frames) == 1 and isinstance(frames[0], Garbage), f"{e}: {frames}"
        assert frames[0].reason == "CRC error", f"{e}: the driver says {frames[0].reason!r}"
        assert int(crc, 16) == int.from_bytes(e.data[-3:-1], "big") != crc16_xmodem(text)
        return
    assert frames == [text], f"{e}: the driver frames it as {frames}"
    assert int(crc, 16) == crc16_xmodem(text), (
        f"{e}: CRC-16/XMODEM of {text!r} is 0x{crc16_xmodem(text):04X}, not 0x{crc.upper()}"
    )
    assert encode_safe_packet(text) == e.data, f"{e}: the driver encodes {text!r} otherwise"


def _check_command(e: Example) -> None:
    digits = re.match(r"\d*", e.text)
    address = digits[0] if digits else ""
    if not e.safe:
        command = e.text[len(address) :]
        encoded = encode_basic_command(int(address) if address else None, command)
        assert encoded == e.data, f"{e}: the driver sends {encoded!r} for {e.text!r}"
    pump = _fact(r"\bpump (\d{1,2})\b", e.meaning)
    if address:
        assert pump is not None, f"{e}: say which pump the command addresses (pump N)"
        assert int(pump) == int(address), f"{e}: {e.text!r} addresses pump {int(address)}"
    else:
        assert pump is None and "no address" in e.meaning, f"{e}: it addresses no pump"


def _check_response(e: Example) -> None:
    if not e.safe:
        frames = FrameParser(safe=False).feed(e.data)
        assert frames == [e.text.encode("ascii")], f"{e}: the driver frames it as {frames}"
    response = parse_response(e.text.encode("ascii"))
    pump = _fact(r"\bpump (\d{1,2})\b", e.meaning)
    assert pump is not None and int(pump) == response.address, (
        f"{e}: the response is from pump {response.address:02d}"
    )
    statuses = [s for s in STATUSES.values() if re.search(rf"\b{re.escape(s)}\b", e.meaning)]
    alarm = _fact(r"\balarm ([a-z][a-z-]*)", e.meaning)
    if response.alarm is not None:
        assert alarm == response.alarm, f"{e}: the driver reads alarm {response.alarm!r}"
        assert not statuses, f"{e}: an alarm replaces the status; the doc says {statuses}"
    else:
        assert alarm is None, f"{e}: the driver reads no alarm"
        assert statuses == [response.status], f"{e}: the driver reads {response.status!r}"
    rate = _fact(r"\brate (\d+(?:\.\d+)?) ?([a-z]+/[a-z]+)", e.meaning)
    assert rate == response.rate(), f"{e}: the driver reads rate {response.rate()!r}"
    infused = _fact(r"\binfused (\d+(?:\.\d+)?) ?(ml|ul)\b", e.meaning)
    volume = parse_volume(response.data)
    assert infused == volume, f"{e}: the driver reads infused {volume!r}"
    error = _fact(r"\berror (\?[a-z]*)", e.meaning)
    expected_error = None if response.error is None else response.error.lower()
    assert error == expected_error, f"{e}: the driver reads error {response.error!r}"


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_a_byte_example_is_what_the_driver_reads_and_writes(example: Example) -> None:
    e = example
    if e.safe:
        _check_safe_packet(e)
        if "crc error" in e.meaning:
            return
    else:
        assert "crc" not in e.meaning, f"{e}: basic mode has no CRC"
        assert e.data == (
            e.text.encode("ascii") + b"\r" if e.to_pump else b"\x02" + e.text.encode() + b"\x03"
        ), f"{e}: basic-mode framing of {e.text!r}"
    if e.to_pump:
        _check_command(e)
    else:
        _check_response(e)
