"""Torch-free CLIP tokenizer: the same token ids as open_clip's ``SimpleTokenizer``.

open_clip's tokenizer (a copy of OpenAI CLIP's) needs torch, ftfy and regex. This one needs only
numpy and the BPE merges file that the CLIP exporter writes into the artifact
(``manifest["text"]["tokenizer"]``). The steps are open_clip's, in the same order:

1. clean: ``ftfy.fix_text`` -> ``html.unescape`` twice -> strip -> collapse whitespace -> lowercase
   (open_clip's ``clean="lower"``, the default of every CLIP model it ships);
2. split with the pattern ``<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|
   [^\\s\\p{L}\\p{N}]+`` (case-insensitive);
3. byte-level BPE with the first 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz``;
4. ``[sot] + ids + [eot]``, truncated to ``context_length`` (77) with the last id forced to eot,
   zero padded.

Where ftfy / regex are installed they are used, so the ids are identical to open_clip's. Without
them (the plain runtime install) a built-in equivalent is used:

- the pattern is matched by a small scanner over Unicode general categories (identical to the
  ``regex`` pattern for every code point Python's ``unicodedata`` knows; code points assigned
  only in a newer Unicode version than Python's may be classed differently);
- ``ftfy.fix_text`` is replaced by its deterministic fixes (semicolon HTML entities, C1 controls
  as windows-1252, Latin ligatures, full/half-width forms, curly quotes, line breaks, surrogates,
  terminal escapes, control characters, NFC). Only ftfy's mojibake repair (text that was decoded
  with the wrong codec, e.g. ``"cafÃ©"``) is not reproduced: such text tokenizes as written.
"""
from __future__ import annotations

import gzip
import html
import html.entities
import itertools
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ArtifactError

DEFAULT_CONTEXT_LENGTH = 77
#: number of BPE merges CLIP uses (open_clip: ``merges[1:49152-256-2+1]``)
NUM_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
#: ids of the start / end-of-text tokens: the last two entries of the vocabulary built below
#: (256 bytes x 2 + NUM_MERGES merges + 2). The end id is the highest id, which is why CLIP (and
#: the runtime) find its position with ``argmax``. For code without a tokenizer at hand.
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


# ------------------------------------------------------------------ byte <-> unicode table
@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 / CLIP BPE."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# ------------------------------------------------------------------ text cleaning
def _ftfy_fix_text():
    try:
        import ftfy  # noqa: PLC0415  optional: exact open_clip behaviour when present

        return ftfy.fix_text
    except ImportError:
        return None


# Tables of ftfy's deterministic fixes (ftfy is MIT licensed; these mirror ftfy.chardata).
_HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_SINGLE_QUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTE_RE = re.compile("[\u201c-\u201f]")
_ANSI_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_C1_RE = re.compile(r"[\x80-\x9f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_LIGATURES = {ord(k): v for k, v in {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž",
    "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff",
    "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}.items()}
_CONTROL_CHARS = {i: None for i in itertools.chain(
    range(0x00, 0x09), [0x0B], range(0x0E, 0x20), [0x7F], range(0x206A, 0x2070), [0xFEFF],
    range(0xFFF9, 0xFFFD))}


@lru_cache(maxsize=1)
def _width_map() -> dict[int, str]:
    m = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            m[i] = alt
    return m


@lru_cache(maxsize=1)
def _html_entities() -> dict[str, str]:
    out = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            out["&" + name] = char
            if name == name.lower():
                upper = "&" + name.upper()
                if html.unescape(upper) == upper:
                    out[upper] = char.upper()
    return out


def _unescape_entity(m: re.Match) -> str:
    text = m.group(0)
    ents = _html_entities()
    if text in ents:
        return ents[text]
    if text.startswith("&#"):
        un = html.unescape(text)
        return text if ";" in un else un
    return text


_SLOPPY_1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}


def _c1_fix(m: re.Match) -> str:
    b = ord(m.group(0))
    return chr(b) if b in _SLOPPY_1252_UNDEFINED else bytes([b]).decode("cp1252")


def _fix_segment(text: str, unescape: bool) -> str:
    while True:
        orig = text
        if unescape:
            text = _HTML_ENTITY_RE.sub(_unescape_entity, text)
        text = _C1_RE.sub(_c1_fix, text)
        text = text.translate(_LIGATURES)
        text = text.translate(_width_map())
        text = _SINGLE_QUOTE_RE.sub("'", _DOUBLE_QUOTE_RE.sub('"', text))
        text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
                .replace("\u2029", "\n").replace("\u0085", "\n"))
        if _SURROGATE_RE.search(text):
            text = _SURROGATE_PAIR_RE.sub(
                lambda p: chr(0x10000 + (ord(p.group(0)[0]) - 0xD800) * 0x400
                              + (ord(p.group(0)[1]) - 0xDC00)), text)
            text = _SURROGATE_RE.sub("\ufffd", text)
        text = _ANSI_RE.sub("", text)
        text = text.translate(_CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def fix_text_lite(text: str) -> str:
    """``ftfy.fix_text`` without its mojibake repair (see the module docstring)."""
    out, pos, unescape = [], 0, True
    while pos < len(text):
        brk = text.find("\n", pos) + 1 or len(text)
        seg = text[pos:brk]
        if "<" in seg:  # ftfy's unescape_html="auto": once off, off for the rest of the text
            unescape = False
        out.append(_fix_segment(seg, unescape))
        pos = brk
    return "".join(out)


def clean_lower(text: str, *, use_ftfy: bool | None = None) -> str:
    """open_clip's ``clean="lower"``: fix text, unescape HTML twice, collapse whitespace, lowercase."""
    fix = _ftfy_fix_text() if use_ftfy in (None, True) else None
    if use_ftfy and fix is None:
        raise ImportError("ftfy is not installed")
    text = fix(text) if fix is not None else fix_text_lite(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


# ------------------------------------------------------------------ pre-tokenization
_PATTERN = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
            r"[^\s\p{L}\p{N}]+")


def _regex_splitter():
    try:
        import regex  # noqa: PLC0415  optional: exact open_clip behaviour when present
    except ImportError:
        return None
    pat = regex.compile(_PATTERN, regex.IGNORECASE)
    return pat.findall


# Unicode White_Space (what ``\s`` means in the regex module; str.isspace adds U+1C..U+1F).
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                         "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


@lru_cache(maxsize=65536)
def _char_class(c: str) -> str:
    """'L' letter, 'N' number, 'S' skipped (whitespace), 'O' other (the pattern's three classes)."""
    cat = unicodedata.category(c)
    if cat[0] == "L":
        return "L"
    if cat[0] == "N":
        return "N"
    if c in _WHITE_SPACE or c == "\u0345":
        # U+0345 (a combining mark) case-folds to a Greek letter, so with IGNORECASE the
        # pattern's negated class does not match it either: the regex skips it like a space.
        return "S"
    return "O"


def split_words(text: str) -> list[str]:
    """The pattern above without the ``regex`` module (same matches, left to right)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        matched = None
        if text[i] == "<":
            for sp in SPECIAL_TOKENS:
                if text[i:i + len(sp)].lower() == sp:
                    matched = text[i:i + len(sp)]
                    break
        elif text[i] == "'":
            for c in _CONTRACTIONS:
                if text[i:i + len(c)].lower() == c:
                    matched = text[i:i + len(c)]
                    break
        if matched is not None:
            out.append(matched)
            i += len(matched)
            continue
        cls = _char_class(text[i])
        if cls == "S":
            i += 1
            continue
        j = i + 1
        if cls != "N":  # letters and "other" run greedily; a number is one code point
            while j < n and _char_class(text[j]) == cls:
                j += 1
        out.append(text[i:j])
        i = j
    return out


# ------------------------------------------------------------------ the tokenizer
class ClipTokenizer:
    """CLIP byte-level BPE tokenizer. ``encode(texts) -> int64 [N, context_length]``.

    ``use_ftfy`` / ``use_regex``: None (default) uses the library when installed, False forces the
    built-in equivalent, True requires the library.
    """

    def __init__(self, bpe_path: str | os.PathLike, *, context_length: int = DEFAULT_CONTEXT_LENGTH,
                 use_ftfy: bool | None = None, use_regex: bool | None = None):
        bpe_path = Path(bpe_path)
        try:
            with gzip.open(bpe_path) as f:
                lines = f.read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ArtifactError(f"cannot read the CLIP BPE vocabulary {bpe_path}: {e}; "
                                f"re-export the model.") from e
        merges = [tuple(m.split()) for m in lines[1:NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ArtifactError(f"{bpe_path} is not a CLIP BPE vocabulary ({len(merges)} merges, "
                                f"expected {NUM_MERGES}); re-export the model.")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        vocab.extend(SPECIAL_TOKENS)
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {t: t for t in SPECIAL_TOKENS}
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[SPECIAL_TOKENS[0]]
        self.eot_token_id = self.encoder[SPECIAL_TOKENS[1]]
        self.context_length = int(context_length)
        self.bpe_path = bpe_path
        if use_regex is True and _regex_splitter() is None:
            raise ImportError("regex is not installed")
        self._split = (_regex_splitter() if use_regex in (None, True) else None) or split_words
        self._use_ftfy = use_ftfy

    # -- construction from an artifact
    @classmethod
    def from_artifact(cls, artifact, **kw) -> "ClipTokenizer":
        """From an ``Artifact`` (or an artifact directory) holding a CLIP text tower."""
        from .artifact import Artifact, sha256_file  # noqa: PLC0415

        if not isinstance(artifact, Artifact):
            artifact = Artifact(artifact)
        text = artifact.manifest.get("text") or {}
        tok = text.get("tokenizer")
        if not tok:
            raise ArtifactError(f"artifact {artifact.dir} has no CLIP text tokenizer "
                                f"(manifest['text']['tokenizer']); it is not a CLIP artifact or "
                                f"was exported without the text tower.")
        if tok.get("type", "clip_bpe") != "clip_bpe":
            raise ArtifactError(f"artifact {artifact.dir} uses tokenizer type {tok.get('type')!r}; "
                                f"this edgeinfer supports 'clip_bpe' only.")
        path = artifact.dir / tok["file"]
        if not path.exists():
            raise ArtifactError(f"{path} (the CLIP tokenizer vocabulary) is listed in the manifest "
                                f"but missing; re-export the model.")
        if tok.get("sha256") and sha256_file(path) != tok["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in the manifest; re-export.")
        ctx = int(tok.get("context_length") or text.get("context_length") or DEFAULT_CONTEXT_LENGTH)
        return cls(path, context_length=ctx, **kw)

    # -- BPE
    def bpe(self, token: str) -> str:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        while True:
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        if len(self.cache) < 200_000:  # bounded: 10,000-label lists must not grow it forever
            self.cache[token] = out
        return out

    def clean(self, text: str) -> str:
        return clean_lower(text, use_ftfy=self._use_ftfy)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        ids: list[int] = []
        enc, benc = self.encoder, self.byte_encoder
        for token in self._split(self.clean(text)):
            token = "".join(benc[b] for b in token.encode("utf-8"))
            ids.extend(enc[t] for t in self.bpe(token).split(" "))
        return ids

    def encode(self, texts: str | Iterable[str], *, context_length: int | None = None) -> np.ndarray:
        """int64 ``[N, context_length]``: ``[sot] + ids + [eot]``, truncated (last id = eot), 0-padded."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be strings, got {type(t).__name__}: {t!r}")
        ctx = int(context_length or self.context_length)
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        for i, t in enumerate(texts):
            ids = [self.sot_token_id] + self.encode_text(t) + [self.eot_token_id]
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
            out[i, :len(ids)] = ids
        return out

    __call__ = encode

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return (bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
                .replace("</w>", " "))

    def truncated(self, text: str, *, context_length: int | None = None) -> bool:
        """Whether ``text`` is longer than the context and gets truncated by ``encode``."""
        return len(self.encode_text(text)) + 2 > int(context_length or self.context_length)


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


def tokenize(texts: str | Iterable[str], artifact) -> np.ndarray:
    """Tokenize ``texts`` with the tokenizer stored in ``artifact`` (Artifact or directory)."""
    return _cached_tokenizer(artifact).encode(texts)


_TOKENIZERS: dict[tuple[str, str], ClipTokenizer] = {}


def _cached_tokenizer(artifact) -> ClipTokenizer:
    from .artifact import Artifact  # noqa: PLC0415

    if not isinstance(artifact, Artifact):
        artifact = Artifact(artifact)
    tok = (artifact.manifest.get("text") or {}).get("tokenizer") or {}
    key = (str(Path(artifact.dir).resolve()), str(tok.get("sha256")))
    t = _TOKENIZERS.get(key)
    if t is None:
        t = _TOKENIZERS[key] = ClipTokenizer.from_artifact(artifact)
    return t


def write_bpe_vocab(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write the part of a CLIP BPE merges file the tokenizer reads (header + 48,894 merges),
    gzip-compressed and deterministic (no timestamp), to ``dst``. Used by the CLIP exporter."""
    with gzip.open(src) as f:
        lines = f.read().decode("utf-8").split("\n")
    data = "\n".join(lines[:NUM_MERGES + 1]).encode("utf-8")
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
