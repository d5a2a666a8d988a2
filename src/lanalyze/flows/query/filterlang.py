"""The flow filter language: nfdump's filter syntax (the daily subset), lexed and parsed to a tree.

Implemented (nfdump(1) "FILTER" section, the parts people use): ``any``, ``[src|dst] host A``
(also ``ip A``), ``[src|dst] net P/LEN`` (also ``net A MASK``, shortened ``10/8``, IPv6),
``[src|dst] port [OP] N``, ``proto tcp|udp|icmp|N``, ``[src|dst] as [OP] N``,
``[in|out] if N``, ``flags SAF...``, ``tos [OP] N``, ``bytes|packets|flows OP N[k|M|G]``,
``icmp-type N`` and ``icmp-code N`` (as nfdump: they imply ``proto icmp or proto icmp6``),
``router ip A`` (the exporter that sent the flow; also ``exporter A``) and, beyond nfdump,
``router net P/LEN`` (also ``exporter net P/LEN``), ``inet``/``inet6``, the enrichment
names (:mod:`lanalyze.flows.enrich`) ``[src|dst] country CC``, ``[src|dst] as name NAME``,
``[src|dst] net name|role NAME``, ``[in|out] if
name|boundary|provider NAME``, ``exporter name NAME``, ``app name NAME`` (NAME a word or
``"quoted text"``), ``and``/``&&``, ``or``/``||``, ``not``/``!`` and parentheses. Operators:
``> < = == >= <= !=`` and nfdump's ``gt lt eq ge le ne``.

Trust: the text is the user's (CLI or HTTP query parameter), so it is untrusted. It is parsed by
a hand-written recursive-descent parser because the grammar is tiny and we need the column of
every token for the caret error message; the tree holds only typed values (ints, 16-byte
addresses, names compared for equality) and column names from a fixed list, so the SQL
compiler (:mod:`lanalyze.flows.query.compile`) cannot put user text into SQL text: names
travel as parameters.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from lanalyze.flows.errors import FilterError
from lanalyze.flows.query.apps import PROTOCOL_NUMBERS

MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 64


# --- the tree -------------------------------------------------------------------------------

Op = str  # one of OPERATORS' values


@dataclass(frozen=True)
class Any_:
    """Matches every flow."""


@dataclass(frozen=True)
class Compare:
    """``column OP value`` on one (or, for ``port``/``as``/``if``, either of two) columns."""

    columns: tuple[str, ...]
    op: Op
    value: int


@dataclass(frozen=True)
class AddrRange:
    """An address column (or either of two) within [low, high], 16-byte IPv4-mapped form."""

    columns: tuple[str, ...]
    low: bytes
    high: bytes


@dataclass(frozen=True)
class TextEquals:
    """A text column (or either of two) equal to ``value`` (an enrichment name)."""

    columns: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class FlagsAll:
    """Every TCP flag of ``mask`` is set."""

    mask: int


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Any_ | Compare | AddrRange | TextEquals | FlagsAll | Not | And | Or

# --- lexing ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<op>>=|<=|==|!=|&&|\|\||[()<>=!])|(?P<word>[A-Za-z0-9_.:/\-]+)"
    r'|(?P<text>"[^"]*"))',
    re.ASCII,
)

OPERATORS: dict[str, Op] = {
    ">": ">",
    "<": "<",
    "=": "=",
    "==": "=",
    ">=": ">=",
    "<=": "<=",
    "!=": "<>",
    "gt": ">",
    "lt": "<",
    "eq": "=",
    "ge": ">=",
    "le": "<=",
    "ne": "<>",
}

# The names of apps.PROTOCOL_NAMES, and the IANA keyword nfdump also takes for ICMPv6.
PROTOCOLS = {**PROTOCOL_NUMBERS, "ipv6-icmp": 58}

TCP_FLAGS = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16, "U": 32, "E": 64, "C": 128}

_SUFFIX = {"k": 1000, "K": 1000, "m": 1000**2, "M": 1000**2, "g": 1000**3, "G": 1000**3}

_U8, _U16, _U32, _U64 = 2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1


@dataclass(frozen=True)
class Token:
    kind: str  # "op", "word" or "end"
    text: str
    column: int


def tokenize(text: str) -> list[Token]:
    tokens = []
    position = 0
    while True:
        match = _TOKEN.match(text, position)
        if match is None:
            rest = text[position:]
            if rest.strip() == "":
                break
            column = position + len(rest) - len(rest.lstrip())
            raise FilterError(f"unexpected character {text[column]!r}", text, column)
        kind = "op" if match.group("op") else "word" if match.group("word") else "text"
        value = match.group(kind)
        # A quoted name: the quotes are not part of it.
        tokens.append(Token(kind, value[1:-1] if kind == "text" else value, match.start(kind)))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# The enrichment names: [side] WHAT [ATTRIBUTE] NAME -> columns.
ENRICHED: dict[tuple[str, str, str], tuple[str, ...]] = {
    **{
        (side, "country", ""): cols
        for side, cols in (
            ("src", ("src_country",)),
            ("dst", ("dst_country",)),
            ("", ("src_country", "dst_country")),
        )
    },
    **{
        (side, what, attribute): tuple(
            f"{s}_{what}_{attribute}" for s in (("src", "dst") if side == "" else (side,))
        )
        for side in ("src", "dst", "")
        for what, attribute in (("as", "name"), ("net", "name"), ("net", "role"))
    },
    **{
        (side, "if", attribute): tuple(
            f"{s}_if_{attribute}" for s in (("in", "out") if side == "" else (side,))
        )
        for side in ("in", "out", "")
        for attribute in ("name", "boundary", "provider")
    },
    ("", "exporter", "name"): ("exporter_name",),
    ("", "app", "name"): ("app_name",),
}


# --- parsing --------------------------------------------------------------------------------


def parse(text: str) -> Node:
    """The tree of a filter; an empty filter matches everything. Raises :class:`FilterError`."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter longer than {MAX_FILTER_LENGTH} characters", text[:80], 80)
    if not text.isprintable():
        column = next(i for i, c in enumerate(text) if not c.isprintable())
        safe = "".join(c if c.isprintable() else "?" for c in text)
        raise FilterError("unprintable character", safe, column)
    if text.strip() == "":
        return Any_()
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    # helpers
    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def error(self, message: str, token: Token | None = None) -> FilterError:
        token = token or self.token
        return FilterError(message, self.text, token.column)

    def advance(self) -> Token:
        token = self.token
        if token.kind != "end":
            self.index += 1
        return token

    def keyword(self, *words: str) -> bool:
        if self.token.kind != "end" and self.token.text.lower() in words:
            self.advance()
            return True
        return False

    def peek_word(self, offset: int = 0) -> str:
        index = min(self.index + offset, len(self.tokens) - 1)
        return self.tokens[index].text.lower() if self.tokens[index].kind == "word" else ""

    # grammar
    def parse(self) -> Node:
        node = self.parse_or()
        if self.token.kind != "end":
            raise self.error(f"unexpected {self.token.text!r}: expected 'and', 'or' or the end")
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.keyword("or", "||"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_not()]
        while self.keyword("and", "&&"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self) -> Node:
        if self.keyword("not", "!"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error("filter nested too deeply")
            node = self.parse_not()
            self.depth -= 1
            return Not(node)
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.token
        if token.kind == "op" and token.text == "(":
            self.advance()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error("filter nested too deeply", token)
            node = self.parse_or()
            self.depth -= 1
            if not (self.token.kind == "op" and self.token.text == ")"):
                raise self.error("expected ')'")
            self.advance()
            return node
        if token.kind != "word":
            raise self.error("expected a filter primitive such as 'host', 'port' or '('")
        return self.parse_predicate()

    def parse_predicate(self) -> Node:
        start = self.token
        word = start.text.lower()
        enriched = self.parse_enriched(word)
        if enriched is not None:
            return enriched
        if word == "any":
            self.advance()
            return Any_()
        if word in ("inet", "ipv4"):
            self.advance()
            return Compare(("ip_version",), "=", 4)
        if word in ("inet6", "ipv6"):
            self.advance()
            return Compare(("ip_version",), "=", 6)
        if word in ("src", "dst"):
            self.advance()
            side = word
            what = self.peek_word()
            if what in ("host", "ip"):
                self.advance()
                return self.parse_host((f"{side}_addr",))
            if what == "net":
                self.advance()
                return self.parse_net((f"{side}_addr",))
            if what == "port":
                self.advance()
                return self.parse_compare((f"{side}_port",), _U16)
            if what == "as":
                self.advance()
                return self.parse_compare((f"{side}_as",), _U32)
            if what == "tos":
                self.advance()
                return self.parse_compare(("tos",), _U8)
            raise self.error(f"expected 'host', 'net', 'port' or 'as' after '{side}'")
        if word in ("host", "ip"):
            self.advance()
            return self.parse_host(("src_addr", "dst_addr"))
        if word == "net":
            self.advance()
            return self.parse_net(("src_addr", "dst_addr"))
        if word == "port":
            self.advance()
            return self.parse_compare(("src_port", "dst_port"), _U16)
        if word == "as":
            self.advance()
            return self.parse_compare(("src_as", "dst_as"), _U32)
        if word in ("in", "out"):
            self.advance()
            if not self.keyword("if"):
                raise self.error(f"expected 'if' after '{word}'")
            return self.parse_compare((f"{word}_if",), _U32)
        if word == "if":
            self.advance()
            return self.parse_compare(("in_if", "out_if"), _U32)
        if word in ("router", "exporter"):
            # nfdump's ``router ip A``; ``exporter A`` reads as the report dimension's name.
            self.advance()
            if self.keyword("net"):
                return self.parse_net(("exporter",))
            if not self.keyword("ip") and word == "router":
                raise self.error("expected 'ip' or 'net' after 'router'")
            return self.parse_host(("exporter",))
        if word == "proto":
            self.advance()
            return self.parse_proto()
        if word == "flags":
            self.advance()
            return self.parse_flags()
        if word == "tos":
            self.advance()
            return self.parse_compare(("tos",), _U8)
        if word in ("bytes", "packets", "flows"):
            self.advance()
            return self.parse_compare((word,), _U64, need_op=True, suffix=True)
        if word in ("icmp-type", "icmp-code"):
            self.advance()
            is_icmp = Or((Compare(("protocol",), "=", 1), Compare(("protocol",), "=", 58)))
            return And((is_icmp, self.parse_compare((word.replace("-", "_"),), _U8)))
        raise self.error(f"unknown filter primitive {start.text!r}")

    def parse_enriched(self, word: str) -> Node | None:
        """``src country NL``, ``net name office``...; None when it is not one of these."""
        side = word if word in ("src", "dst", "in", "out") else ""
        offset = 1 if side else 0
        what = self.peek_word(offset)
        attribute = "" if what == "country" else self.peek_word(offset + 1)
        columns = ENRICHED.get((side, what, attribute))
        if columns is None:
            return None
        for _ in range(offset + (1 if what == "country" else 2)):
            self.advance()
        token = self.token
        if token.kind not in ("word", "text") or token.text == "":
            raise self.error(f'expected a {what} {attribute or "code"} (a word or "text")')
        value = token.text
        if what == "country":
            if not (len(value) == 2 and value.isascii() and value.isalpha()):
                raise self.error("expected a two-letter country code such as NL")
            value = value.upper()
        elif attribute == "boundary" and value.lower() not in ("internal", "external"):
            raise self.error("expected 'internal' or 'external'")
        elif attribute == "boundary":
            value = value.lower()
        self.advance()
        return TextEquals(columns, value)

    def parse_operator(self, need_op: bool) -> Op:
        token = self.token
        key = token.text.lower() if token.kind == "word" else token.text
        if key in OPERATORS and token.kind != "end":
            self.advance()
            return OPERATORS[key]
        if need_op:
            raise self.error("expected a comparison operator (> < = >= <= != gt lt eq)")
        return "="

    def parse_number(self, limit: int, suffix: bool = False) -> int:
        token = self.token
        if token.kind != "word":
            raise self.error("expected a number")
        text = token.text
        scale = 1
        if suffix and text[-1:] in _SUFFIX and len(text) > 1:
            scale = _SUFFIX[text[-1]]
            text = text[:-1]
        if not text.isdigit() or len(text) > 20:
            raise self.error(f"expected a number, got {token.text!r}")
        value = int(text) * scale
        if value > limit:
            raise self.error(f"number out of range (0 to {limit})")
        self.advance()
        return value

    def parse_compare(
        self, columns: tuple[str, ...], limit: int, need_op: bool = False, suffix: bool = False
    ) -> Node:
        op = self.parse_operator(need_op)
        return Compare(columns, op, self.parse_number(limit, suffix))

    def parse_proto(self) -> Node:
        token = self.token
        name = token.text.lower() if token.kind == "word" else ""
        if name in PROTOCOLS:
            self.advance()
            return Compare(("protocol",), "=", PROTOCOLS[name])
        if name.isdigit():
            return Compare(("protocol",), "=", self.parse_number(_U8))
        raise self.error("expected a protocol name (tcp, udp, icmp, icmp6, ...) or number")

    def parse_flags(self) -> Node:
        token = self.token
        if token.kind != "word":
            raise self.error("expected TCP flags such as 'S', 'AS' or 'X' (all)")
        mask = 0
        for offset, letter in enumerate(token.text.upper()):
            if letter == "X":
                mask |= 0x3F
            elif letter in TCP_FLAGS:
                mask |= TCP_FLAGS[letter]
            else:
                raise FilterError(
                    f"unknown TCP flag {letter!r} (use C E U A P R S F, or X)",
                    self.text,
                    token.column + offset,
                )
        self.advance()
        return FlagsAll(mask)

    def parse_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        token = self.token
        try:
            address = ipaddress.ip_address(token.text if token.kind == "word" else "")
        except ValueError:
            raise self.error("expected an IPv4 or IPv6 address") from None
        self.advance()
        return address

    def parse_host(self, columns: tuple[str, ...]) -> Node:
        value = _mapped(self.parse_address())
        return AddrRange(columns, value, value)

    def parse_net(self, columns: tuple[str, ...]) -> Node:
        token = self.token
        if token.kind != "word":
            raise self.error("expected a network such as 10.0.0.0/8 or 2001:db8::/32")
        text = token.text
        address_text, slash, length_text = text.partition("/")
        if not slash:
            # ``net 10.0.0.0 255.0.0.0``: the mask is the next token.
            self.advance()
            mask_token = self.token
            try:
                network = ipaddress.ip_network(f"{address_text}/{mask_token.text}", strict=False)
            except ValueError:
                raise self.error(
                    "expected a netmask such as 255.255.0.0 (or write 10.0.0.0/16)"
                ) from None
            if mask_token.kind != "word":
                raise self.error("expected a netmask")
            self.advance()
            return _net_range(columns, network)
        if ":" not in address_text and address_text.count(".") < 3:
            # nfdump's shortened IPv4 networks: ``172.16/16``.
            parts = [p for p in address_text.split(".") if p != ""]
            address_text = ".".join([*parts, *["0"] * (4 - len(parts))])
        try:
            network = ipaddress.ip_network(f"{address_text}/{length_text}", strict=False)
        except ValueError:
            raise self.error("expected a network such as 10.0.0.0/8 or 2001:db8::/32") from None
        self.advance()
        return _net_range(columns, network)


def _mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if address.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    return address.packed


def _net_range(
    columns: tuple[str, ...], network: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> AddrRange:
    return AddrRange(columns, _mapped(network.network_address), _mapped(network.broadcast_address))
