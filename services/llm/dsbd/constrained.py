"""Constrained decoding: mask the next-token log-probabilities so the output is always valid.

Why here and not in the decoding core: DSBD (and plain beam sampling) only ever sees a
``NextTokenModel``. ``ConstrainedModel`` wraps one and sets every token that would break the
constraint to -inf (then renormalises). Wrapping the target *and* the draft with the same
constraint keeps DSBD exact: it samples from the constrained target distribution, and the draft
simply proposes from the constrained draft.

How: a byte-level automaton (``ObjectAutomaton`` for a JSON schema, ``ChoiceAutomaton`` for a
fixed list of strings) is run over the bytes of each token; a trie of the vocabulary's byte
strings is walked once per automaton state to find every token that keeps the output a valid
prefix. Results are cached per state, so a JSON string body (the same state for every byte) is
computed once.

Termination is part of validity. Each state knows the fewest bytes that complete the output
(``cost``); a token is allowed only if, after it, the remaining token budget still covers that
cost. With a byte-level BPE vocabulary every byte is one token, so the output is *always*
complete and valid JSON by ``max_tokens``. EOS is allowed exactly when the output is complete.

Supported JSON-schema subset (anything else is a ``SchemaError`` -> HTTP 400):

- the top level is ``{"type": "object", "properties": {...}, "required": [...]}``;
  ``additionalProperties`` is accepted and treated as false (no other keys are generated);
- each property is ``{"type": "string"}`` (optionally with ``maxLength``, in characters as JSON Schema
  counts them: an escape or a multi-byte character is one), ``{"type": "number"}``, ``{"type": "integer"}``,
  ``{"type": "boolean"}``, ``{"type": "null"}``, an ``enum`` of scalars (with or without a
  matching ``type``) or a ``const``;
- annotations (``title``, ``description``, ``default``, ``examples``, ``$schema``, ``$id``) are ignored.

Output form: compact JSON (no whitespace), keys in schema order, optional keys may be omitted,
required keys are always present. Numbers have at most 15 integer/fraction digits and 3
exponent digits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

State = tuple[Any, ...]
_INF = math.inf

_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
_OBJECT_KEYS = {"type", "properties", "required", "additionalProperties"} | _ANNOTATIONS
_PROPERTY_KEYS = {"type", "enum", "const", "maxLength"} | _ANNOTATIONS
_MAX_DIGITS = 15
_MAX_EXP_DIGITS = 3


class SchemaError(ValueError):
    """The schema uses something outside the supported subset (see the module docstring)."""


# --------------------------------------------------------------------------------------------
# automata


class Automaton(Protocol):
    start: State

    def step(self, state: State, byte: int) -> State | None:
        """The state after ``byte``, or None when the byte cannot continue a valid output."""
        ...

    def cost(self, state: State) -> float:
        """The fewest bytes that complete a valid output from ``state`` (0 when complete)."""
        ...

    def complete(self, state: State) -> bool: ...


@dataclass(frozen=True)
class Property:
    name: str
    key: bytes  # the key as written, with quotes and the colon: b'"name":'
    kind: str  # "string" | "literal" | "number" | "integer"
    literals: tuple[bytes, ...] = ()
    max_length: int | None = None  # strings: at most this many characters

    @property
    def min_value(self) -> int:
        if self.kind == "string":
            return 2
        if self.kind == "literal":
            return min(len(lit) for lit in self.literals)
        return 1


def _literal(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _matches_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return False


def _property(name: str, spec: Any) -> Property:
    if not isinstance(spec, Mapping):
        raise SchemaError(f"property {name!r} must be a schema object")
    extra = sorted(set(spec) - _PROPERTY_KEYS)
    if extra:
        raise SchemaError(f"property {name!r} uses {extra[0]!r}, which is not supported")
    kind = spec.get("type")
    if kind is not None and kind not in {"string", "number", "integer", "boolean", "null"}:
        raise SchemaError(f"property {name!r} has type {kind!r}; only scalar types are supported")
    key = _literal(name) + b":"
    max_length = spec.get("maxLength")
    if max_length is not None and (
        kind != "string" or isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0
    ):
        raise SchemaError(f"property {name!r}: maxLength must be a non-negative integer on a string")
    values: list[Any] | None = None
    if "const" in spec:
        values = [spec["const"]]
    if "enum" in spec:
        if values is not None:
            raise SchemaError(f"property {name!r} has both enum and const")
        if not isinstance(spec["enum"], list) or not spec["enum"]:
            raise SchemaError(f"property {name!r}: enum must be a non-empty list")
        values = list(spec["enum"])
    if values is not None:
        for v in values:
            if isinstance(v, dict | list) or (isinstance(v, float) and not math.isfinite(v)):
                raise SchemaError(f"property {name!r}: enum/const values must be JSON scalars")
            if kind is not None and not _matches_type(v, kind):
                raise SchemaError(f"property {name!r}: enum value {v!r} is not of type {kind}")
        literals = tuple(dict.fromkeys(_literal(v) for v in values))
        return Property(name, key, "literal", literals)
    if kind is None:
        raise SchemaError(f"property {name!r} needs a type, an enum or a const")
    if kind == "boolean":
        return Property(name, key, "literal", (b"true", b"false"))
    if kind == "null":
        return Property(name, key, "literal", (b"null",))
    return Property(name, key, kind, max_length=max_length if "enum" not in spec and "const" not in spec else None)


@dataclass(frozen=True)
class ObjectSchema:
    properties: tuple[Property, ...]
    required: frozenset[int]  # indices into properties

    def conforms(self, value: Any) -> bool:
        """True when ``value`` (parsed JSON) is valid for the schema this was compiled from."""
        if not isinstance(value, dict):
            return False
        names = {p.name: p for p in self.properties}
        if any(k not in names for k in value):
            return False
        if any(self.properties[i].name not in value for i in self.required):
            return False
        for key, item in value.items():
            prop = names[key]
            if prop.kind == "literal":
                if _literal(item) not in prop.literals:
                    return False
            elif not _matches_type(item, prop.kind):
                return False
            elif prop.max_length is not None and len(item) > prop.max_length:
                return False
        return True


def compile_schema(schema: Mapping[str, Any], max_properties: int = 32) -> ObjectSchema:
    """Check ``schema`` against the supported subset and compile it (``SchemaError`` if outside)."""
    if not isinstance(schema, Mapping):
        raise SchemaError("the schema must be an object")
    extra = sorted(set(schema) - _OBJECT_KEYS)
    if extra:
        raise SchemaError(f"{extra[0]!r} is not supported at the top level")
    if schema.get("type", "object") != "object":
        raise SchemaError("the top level must be an object (type: object)")
    props = schema.get("properties") or {}
    if not isinstance(props, Mapping):
        raise SchemaError("properties must be an object")
    if len(props) > max_properties:
        raise SchemaError(f"at most {max_properties} properties are supported")
    additional = schema.get("additionalProperties", False)
    if not isinstance(additional, bool | Mapping):
        raise SchemaError("additionalProperties must be a boolean or a schema")
    compiled = tuple(_property(str(name), spec) for name, spec in props.items())
    required = schema.get("required") or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError("required must be a list of property names")
    index = {p.name: i for i, p in enumerate(compiled)}
    missing = [r for r in required if r not in index]
    if missing:
        raise SchemaError(f"required property {missing[0]!r} is not in properties")
    return ObjectSchema(compiled, frozenset(index[r] for r in required))


_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')


def _utf8_lead(byte: int) -> tuple[int, int, int] | None:
    """(continuation bytes, low, high bound of the first continuation) for a UTF-8 lead byte."""
    if 0xC2 <= byte <= 0xDF:
        return 1, 0x80, 0xBF
    if byte == 0xE0:
        return 2, 0xA0, 0xBF
    if 0xE1 <= byte <= 0xEC or byte in (0xEE, 0xEF):
        return 2, 0x80, 0xBF
    if byte == 0xED:
        return 2, 0x80, 0x9F  # no UTF-16 surrogates
    if byte == 0xF0:
        return 3, 0x90, 0xBF
    if 0xF1 <= byte <= 0xF3:
        return 3, 0x80, 0xBF
    if byte == 0xF4:
        return 3, 0x80, 0x8F
    return None


class ObjectAutomaton:
    """Compact JSON for one ``ObjectSchema``; states are small tuples (hashable, cacheable).

    ("open",) after ``{`` ... ("key", i, prefix) inside a key (next property index >= i),
    ("v", k) before the value of property k, ("str", k, mode, pending, lo, hi, count) inside a string
    (``count``: characters so far, kept only under a ``maxLength`` so that other strings stay one state),
    ("lit", k, prefix) inside an enum/boolean/null literal, ("num", k, phase, digits) inside a
    number, ("after", k) after the value of property k, ("done",) after the closing ``}``.
    """

    def __init__(self, schema: ObjectSchema) -> None:
        self.schema = schema
        self.start: State = ("start",)
        props = schema.properties
        n = len(props)
        # after[j]: bytes to close after property j's value: each later required property
        # (comma + key + shortest value), then "}". after[-1] is the same from before any property.
        self._after = [0] * (n + 1)
        for j in range(-1, n):
            later = [k for k in range(j + 1, n) if k in schema.required]
            self._after[j] = 1 + sum(1 + len(props[k].key) + props[k].min_value for k in later)
        self._candidates = [self._keys_from(i) for i in range(n + 1)]

    def _keys_from(self, i: int) -> tuple[int, ...]:
        """Properties that may come next when the next index is >= i: up to the first required one."""
        out = []
        for k in range(i, len(self.schema.properties)):
            out.append(k)
            if k in self.schema.required:
                break
        return tuple(out)

    def complete(self, state: State) -> bool:
        return bool(state[0] == "done")

    # -- transitions --------------------------------------------------------------------------
    def step(self, state: State, byte: int) -> State | None:
        tag = state[0]
        props = self.schema.properties
        if tag == "start":
            return ("open",) if byte == 0x7B else None
        if tag == "open":
            if byte == 0x7D and not self.schema.required:
                return ("done",)
            return self._key(0, b"", byte)
        if tag == "key":
            return self._key(state[1], state[2], byte)
        if tag == "v":
            k = state[1]
            prop = props[k]
            if prop.kind == "string":
                return ("str", k, 0, 0, 0x80, 0xBF, 0) if byte == 0x22 else None
            if prop.kind == "literal":
                return self.step(("lit", k, b""), byte)
            return self._number(k, "start", 0, byte)
        if tag == "str":
            return self._string(state, byte)
        if tag == "lit":
            k, prefix = state[1], state[2]
            grown = prefix + bytes((byte,))
            if any(lit.startswith(grown) for lit in props[k].literals):
                return ("lit", k, grown)
            if prefix in props[k].literals:
                return self.step(("after", k), byte)
            return None
        if tag == "num":
            return self._number(state[1], state[2], state[3], byte)
        if tag == "after":
            j = state[1]
            if byte == 0x2C and j + 1 < len(props):
                return ("key", j + 1, b"")
            if byte == 0x7D and not any(k > j for k in self.schema.required):
                return ("done",)
            return None
        return None  # done: nothing may follow

    def _key(self, i: int, prefix: bytes, byte: int) -> State | None:
        grown = prefix + bytes((byte,))
        props = self.schema.properties
        matches = [k for k in self._candidates[i] if props[k].key.startswith(grown)]
        if not matches:
            return None
        for k in matches:
            if props[k].key == grown:
                return ("v", k)  # keys end with '":', so no key is a prefix of another
        return ("key", i, grown)

    def _string(self, state: State, byte: int) -> State | None:
        _, k, mode, pending, lo, hi, count = state
        if pending:
            if not lo <= byte <= hi:
                return None
            return ("str", k, 0, pending - 1, 0x80, 0xBF, count)
        if mode == 1:  # after a backslash
            if byte in _ESCAPES:
                return ("str", k, 0, 0, 0x80, 0xBF, count)
            return ("str", k, 2, 0, 0x80, 0xBF, count) if byte == 0x75 else None
        if mode >= 2:  # \u and (mode - 2) hex digits so far
            if byte not in _HEX:
                return None
            return ("str", k, 0 if mode == 5 else mode + 1, 0, 0x80, 0xBF, count)
        if byte == 0x22:
            return ("after", k)
        if byte < 0x20:
            return None  # control characters must be escaped
        # Any other byte starts a character: an escape, an ASCII character or a UTF-8 lead byte.
        limit = self.schema.properties[k].max_length
        if limit is not None:
            if count >= limit:
                return None
            count += 1
        if byte == 0x5C:
            return ("str", k, 1, 0, 0x80, 0xBF, count)
        if byte < 0x80:
            return ("str", k, 0, 0, 0x80, 0xBF, count)
        lead = _utf8_lead(byte)
        if lead is None:
            return None
        return ("str", k, 0, *lead, count)

    def _number(self, k: int, phase: str, digits: int, byte: int) -> State | None:
        integer = self.schema.properties[k].kind == "integer"
        is_digit = byte in _DIGITS
        if phase in ("start", "sign"):
            if byte == 0x2D and phase == "start":
                return ("num", k, "sign", 0)
            if byte == 0x30:
                return ("num", k, "zero", 1)
            return ("num", k, "int", 1) if is_digit else None
        if phase in ("zero", "int"):
            if is_digit and phase == "int" and digits < _MAX_DIGITS:
                return ("num", k, "int", digits + 1)
            if not integer and byte == 0x2E:
                return ("num", k, "dot", 0)
            if not integer and byte in (0x65, 0x45):
                return ("num", k, "e", 0)
        elif phase == "dot":
            return ("num", k, "frac", 1) if is_digit else None
        elif phase == "frac":
            if is_digit and digits < _MAX_DIGITS:
                return ("num", k, "frac", digits + 1)
            if byte in (0x65, 0x45):
                return ("num", k, "e", 0)
        elif phase in ("e", "esign"):
            if phase == "e" and byte in (0x2B, 0x2D):
                return ("num", k, "esign", 0)
            return ("num", k, "exp", 1) if is_digit else None
        elif phase == "exp" and is_digit and digits < _MAX_EXP_DIGITS:
            return ("num", k, "exp", digits + 1)
        if phase in ("zero", "int", "frac", "exp"):
            return self.step(("after", k), byte)  # the number is complete: the byte belongs to what follows
        return None

    # -- cost ---------------------------------------------------------------------------------
    def cost(self, state: State) -> float:
        tag = state[0]
        props = self.schema.properties
        if tag == "done":
            return 0
        if tag == "start":
            return 1 + self.cost(("open",))
        if tag == "open":
            if not self.schema.required:
                return 1
            return self._key_cost(0, b"")
        if tag == "key":
            return self._key_cost(state[1], state[2])
        if tag == "v":
            return props[state[1]].min_value + self._after[state[1]]
        if tag == "after":
            return self._after[state[1]]
        if tag == "str":
            _, k, mode, pending, _, _, _ = state
            escape = 1 if mode == 1 else (6 - mode if mode >= 2 else 0)
            return int(pending) + escape + 1 + self._after[k]
        if tag == "lit":
            k, prefix = state[1], state[2]
            rest = [len(lit) - len(prefix) for lit in props[k].literals if lit.startswith(prefix)]
            return min(rest) + self._after[k] if rest else _INF
        if tag == "num":
            k, phase = state[1], state[2]
            return (0 if phase in ("zero", "int", "frac", "exp") else 1) + self._after[k]
        return _INF

    def _key_cost(self, i: int, prefix: bytes) -> float:
        props = self.schema.properties
        costs = [
            len(props[k].key) - len(prefix) + props[k].min_value + self._after[k]
            for k in self._candidates[i]
            if props[k].key.startswith(prefix)
        ]
        return min(costs) if costs else _INF


class ChoiceAutomaton:
    """Exactly one of a list of strings (its UTF-8 bytes), nothing before or after."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(c.encode("utf-8") for c in choices)
        self.start: State = ("c", b"")

    def step(self, state: State, byte: int) -> State | None:
        grown = state[1] + bytes((byte,))
        return ("c", grown) if any(c.startswith(grown) for c in self.choices) else None

    def cost(self, state: State) -> float:
        rest = [len(c) - len(state[1]) for c in self.choices if c.startswith(state[1])]
        return min(rest) if rest else _INF

    def complete(self, state: State) -> bool:
        return state[1] in self.choices


# --------------------------------------------------------------------------------------------
# tokens


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: each byte is written as one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_BYTE_DECODER = {ch: b for b, ch in _bytes_to_unicode().items()}


class TokenVocabulary:
    """The byte string of every token id (None for special tokens), and a trie over them."""

    def __init__(self, token_bytes: Sequence[bytes | None], eos_token_id: int | None) -> None:
        self.token_bytes = list(token_bytes)
        self.size = len(self.token_bytes)
        self.eos_token_id = eos_token_id
        # Trie as parallel lists: children[node] maps a byte to a child node; ends[node] lists the
        # tokens whose bytes end there.
        self._children: list[dict[int, int]] = [{}]
        self._ends: list[list[int]] = [[]]
        for tid, data in enumerate(self.token_bytes):
            if not data:
                continue
            node = 0
            for byte in data:
                nxt = self._children[node].get(byte)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][byte] = nxt
                    self._children.append({})
                    self._ends.append([])
                node = nxt
            self._ends[node].append(tid)
        single = {data[0] for data in self.token_bytes if data is not None and len(data) == 1}
        # Every byte a token of its own: then each byte of the cheapest completion is one token,
        # and the budget rule guarantees a complete output.
        self.every_byte_is_a_token = len(single) == 256

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int | None = None) -> TokenVocabulary:
        """Byte strings from a Hugging Face tokenizer: byte-level BPE, SentencePiece, or decode()."""
        vocab: Mapping[str, int] = tokenizer.get_vocab()
        size = max(vocab_size or 0, max(vocab.values()) + 1 if vocab else 0)
        pieces: list[str | None] = [None] * size
        for text, tid in vocab.items():
            if 0 <= tid < size:
                pieces[tid] = text
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special |= {int(tid) for tid, tok in added.items() if getattr(tok, "special", False)}
        normal = [p for i, p in enumerate(pieces) if p is not None and i not in special]
        byte_level = bool(normal) and all(ch in _BYTE_DECODER for p in normal for ch in p)
        out: list[bytes | None] = []
        for tid, piece in enumerate(pieces):
            if piece is None or tid in special:
                out.append(None)
            elif byte_level:
                out.append(bytes(_BYTE_DECODER[ch] for ch in piece))
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out.append(bytes((int(piece[3:5], 16),)))  # SentencePiece byte fallback
            elif "▁" in piece:
                out.append(piece.replace("▁", " ").encode("utf-8"))
            else:
                out.append(tokenizer.decode([tid]).encode("utf-8"))
        return cls(out, getattr(tokenizer, "eos_token_id", None))

    def walk(self, automaton: Automaton, state: State) -> tuple[list[int], list[State]]:
        """Every token that may follow ``state``, with the state it leads to (a pruned trie walk)."""
        ids: list[int] = []
        states: list[State] = []
        stack: list[tuple[int, State]] = [(0, state)]
        children, ends, step = self._children, self._ends, automaton.step
        while stack:
            node, current = stack.pop()
            for byte, child in children[node].items():
                nxt = step(current, byte)
                if nxt is None:
                    continue
                for tid in ends[child]:
                    ids.append(tid)
                    states.append(nxt)
                if children[child]:
                    stack.append((child, nxt))
        return ids, states


class TokenConstraint:
    """An automaton lifted to tokens: allowed-token masks and state replay, cached per state."""

    def __init__(self, automaton: Automaton, vocab: TokenVocabulary) -> None:
        self.automaton = automaton
        self.vocab = vocab
        self._next: dict[State, dict[int, State]] = {}
        self._cost: dict[State, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def start(self) -> State:
        return self.automaton.start

    def min_tokens(self) -> int:
        """Tokens the shortest valid output needs (a byte per token at worst): max_tokens must cover it."""
        return int(self.automaton.cost(self.automaton.start))

    def _table(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cost.get(state)
        if cached is None:
            ids, states = self.vocab.walk(self.automaton, state)
            self._next[state] = dict(zip(ids, states, strict=True))
            costs = np.array([self.automaton.cost(s) for s in states], dtype=np.float64)
            cached = (np.asarray(ids, dtype=np.int64), costs)
            self._cost[state] = cached
        return cached

    def advance(self, state: State | None, token_id: int) -> State | None:
        """The state after ``token_id`` (None once the output can no longer be valid)."""
        if state is None:
            return None
        self._table(state)
        return self._next[state].get(int(token_id))

    def mask(self, state: State | None, remaining: int, size: int) -> np.ndarray:
        """Allowed next tokens with ``remaining`` tokens of budget left (this one included)."""
        allowed = np.zeros(size, dtype=bool)
        eos = self.vocab.eos_token_id
        if state is None:
            if eos is not None and eos < size:
                allowed[eos] = True  # an already-invalid prefix (never produced here): end it
            return allowed
        ids, costs = self._table(state)
        keep = ids[(costs <= max(remaining, 1) - 1) & (ids < size)]
        allowed[keep] = True
        if self.automaton.complete(state) and eos is not None and eos < size:
            allowed[eos] = True
        return allowed


def automaton_for(kind: str, schema: Mapping[str, Any] | None = None, choices: Sequence[str] = ()) -> Automaton:
    if kind == "choice":
        return ChoiceAutomaton(choices)
    if kind == "json_schema" and schema is not None:
        return ObjectAutomaton(compile_schema(schema))
    raise SchemaError(f"unknown constraint kind {kind!r}")


@lru_cache(maxsize=64)
def _cached(kind: str, key: str, vocab_id: int) -> TokenConstraint:
    vocab = _VOCABS[vocab_id]
    if kind == "choice":
        return TokenConstraint(ChoiceAutomaton(json.loads(key)), vocab)
    return TokenConstraint(automaton_for(kind, json.loads(key)), vocab)


_VOCABS: dict[int, TokenVocabulary] = {}


def constraint_for(
    kind: str, vocab: TokenVocabulary, schema: Mapping[str, Any] | None = None, choices: Sequence[str] = ()
) -> TokenConstraint:
    """A (cached) token constraint: repeated requests with the same schema reuse its masks."""
    _VOCABS[id(vocab)] = vocab
    key = json.dumps(list(choices) if kind == "choice" else schema)
    return _cached(kind, key, id(vocab))


# --------------------------------------------------------------------------------------------
# the model wrapper


class NextTokenModelLike(Protocol):
    vocab_size: int

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray: ...


class ConstrainedModel:
    """A ``NextTokenModel`` whose distributions only give mass to tokens that keep the output valid.

    ``prompt_len`` tokens of each prefix are the prompt; the rest is replayed through the
    constraint (memoised per prefix, so a forest of prefixes costs one step per node). Build it
    with ``constrain``, which keeps a forest-scoring backend's single-pass path.
    """

    def __init__(self, base: NextTokenModelLike, constraint: TokenConstraint, prompt_len: int, max_tokens: int):
        self.base = base
        self.constraint = constraint
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.vocab_size = base.vocab_size
        self._states: dict[tuple[int, ...], State | None] = {(): constraint.start}

    def state_of(self, generated: Sequence[int]) -> State | None:
        key = tuple(int(t) for t in generated)
        known = len(key)
        while key[:known] not in self._states:  # the longest prefix already replayed
            known -= 1
        state = self._states[key[:known]]
        for end in range(known + 1, len(key) + 1):
            state = self.constraint.advance(state, key[end - 1])
            self._states[key[:end]] = state
        return state

    def _mask_rows(self, scores: np.ndarray, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.array(scores, dtype=np.float64, copy=True)
        for row, prefix in enumerate(prefixes):
            generated = list(prefix[self.prompt_len :])
            allowed = self.constraint.mask(self.state_of(generated), self.max_tokens - len(generated), out.shape[1])
            if not allowed.any():  # no token can help (cannot happen with a byte-level vocabulary)
                continue
            values = out[row]
            values[~allowed] = -np.inf
            kept = values[allowed]
            top = kept.max()
            if not np.isfinite(top):  # the model gives the allowed tokens no mass: spread it evenly
                values[allowed] = -math.log(int(allowed.sum()))
                continue
            values[allowed] = kept - (top + math.log(np.exp(kept - top).sum()))
        return out

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        return self._mask_rows(self.base.next_logprobs(prefixes), prefixes)

    def retain(self, sequences: Sequence[Sequence[int]]) -> None:
        from dsbd.forest import retain

        retain(self.base, sequences)


class ConstrainedForestModel(ConstrainedModel):
    """The same, for a backend that scores a whole forest in one pass (``dsbd.forest.ForestScorer``)."""

    def forest_logprobs(self, prefix: Sequence[int], forest: Any) -> np.ndarray:
        scores = self.base.forest_logprobs(prefix, forest)  # type: ignore[attr-defined]
        rows = [list(prefix)] + [list(prefix) + forest.path(i) for i in range(len(forest))]
        return self._mask_rows(scores, rows)


def constrain(
    base: NextTokenModelLike, constraint: TokenConstraint, prompt_len: int, max_tokens: int
) -> ConstrainedModel:
    """Wrap ``base``; a forest scorer stays a forest scorer (one forward pass per DSBD iteration)."""
    if callable(getattr(base, "forest_logprobs", None)):
        return ConstrainedForestModel(base, constraint, prompt_len, max_tokens)
    return ConstrainedModel(base, constraint, prompt_len, max_tokens)


def is_valid(kind: str, text: str, schema: Mapping[str, Any] | None = None, choices: Sequence[str] = ()) -> bool:
    """True when ``text`` satisfies the constraint (what tests and callers check outputs with)."""
    if kind == "choice":
        return text in choices
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return compile_schema(schema or {}).conforms(value)
