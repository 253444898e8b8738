"""The torch-free CLIP tokenizer gives the same ids as open_clip's SimpleTokenizer."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from edgeinfer.errors import ArtifactError
from edgeinfer.runtime.tokenizer import (EOT_TOKEN_ID, SOT_TOKEN_ID, ClipTokenizer, _char_class,
                                         split_words, tokenize, write_bpe_vocab)

open_clip = pytest.importorskip("open_clip")

STRINGS = [
    "a photo of a cat.", "", "   ", "Hello, World!!", "it's a dog's life", "IT'S THEY'LL WE'D",
    "''s", "naïve café résumé Ångström", "日本語のテキスト", "中文标签", "Ελληνικά κείμενο",
    "Привет мир", "emoji 🐶🐱 😀👍🏽 🇫🇷", "١٢٣ arabic digits ٤", "x" * 500, "word " * 100,
    "ﬁsh ＬＯＵＤ “quoted” ‘single’ ʼn", "&amp;quot;hi&quot; &lt;b&gt; &EACUTE; &#39;",
    "tab\tnew\nline\r\nend", "<start_of_text>abc<END_OF_TEXT>", "a\x00b\x07c\x7f",
    "\x1b[36mblue\x1b[0m", "Ǆemal ǅ", "x\x85y\x93z\x9d", "12345 3.14 1e9", "C++ & C# -> f(x)",
    "😀" * 40, "İstanbul", "Ⅻ ½ ² ³", "ß straße STRASSE", "ｶﾀｶﾅ ｱｲｳ", "한국어 텍스트", "עברית",
    "हिन्दी", "ไทย", "x\u200by\u200dz\ufeff", "combining e\u0301 vs é", "Greek ι\u0345 ypogegrammeni",
    "a" + "\u0301" * 30, "<b>bold</b> &amp; more", "shark, dolphin, lizard, giraffe",
    "a very long label " * 30, "\u3000ideographic\u3000space", "tabs\t\t\tand   spaces",
]


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("tok") / "bpe.txt.gz"
    write_bpe_vocab(open_clip.tokenizer.default_bpe(), p)
    return p


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.parametrize("mode", ["libraries", "builtin"])
def test_same_ids_as_open_clip(bpe_path, reference, mode):
    kw = {} if mode == "libraries" else {"use_ftfy": False, "use_regex": False}
    tok = ClipTokenizer(bpe_path, **kw)
    ours = tok.encode(STRINGS)
    ref = reference(STRINGS).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(STRINGS), 77)
    bad = [s for s, a, b in zip(STRINGS, ours, ref) if not np.array_equal(a, b)]
    assert not bad, f"token ids differ from open_clip for {bad!r}"


def test_builtin_matches_on_random_unicode(bpe_path, reference):
    """Seeded fuzz over mixed scripts, controls, entities, quotes and widths (built-in mode).

    Strings that ftfy would treat as mojibake are left out: the built-in cleaner documents that
    it does not repair mojibake."""
    ftfy = pytest.importorskip("ftfy")
    tok = ClipTokenizer(bpe_path, use_ftfy=False, use_regex=False)
    pools = ["abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 ,.!?'\"-_&;#<>()", "éèàçüößñÅØæœ",
             "日本語中文한국어", "αβγδΩπι", "жизньПРИВЕТ", "😀🐶👍🏽🇫🇷", "\u201c\u201d\u2018\u2019ﬁﬂ",
             "\t\n\r\x85\u2028\u3000\u00a0", "١٢٣٤٥६७८", "\x00\x07\x1b\x7f\x80\x93\x9d\ufeff\u200b",
             "&amp;&lt;&#39;&eacute;&EACUTE;", "ｱｲｳＡＢＣ１２３", "\u0301\u0308\u0345"]
    rng = random.Random(1234)
    texts = []
    while len(texts) < 600:
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60)))
        if ftfy.fix_text(s) == ftfy.fix_text(s, fix_encoding=False):
            texts.append(s)
    ours = tok.encode(texts)
    ref = reference(texts).numpy()
    bad = [s for s, a, b in zip(texts, ours, ref) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]!r}"


def test_character_classes_match_regex_module():
    """The built-in scanner classes every code point as the regex pattern does."""
    regex = pytest.importorskip("regex")
    letter = regex.compile(r"[\p{L}]", regex.I)
    number = regex.compile(r"[\p{N}]", regex.I)
    other = regex.compile(r"[^\s\p{L}\p{N}]", regex.I)
    bad = []
    for cp in range(0x30000):
        c = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(c) == "Cn":
            continue  # unassigned in Python's Unicode version (regex may know a newer one)
        want = ("L" if letter.match(c) else "N" if number.match(c) else
                "O" if other.match(c) else "S")
        if _char_class(c) != want:
            bad.append(hex(cp))
    assert not bad, bad[:20]


def test_split_words_examples():
    assert split_words("it's 42 cats!!") == ["it", "'s", "4", "2", "cats", "!!"]
    assert split_words("<start_of_text>x") == ["<start_of_text>", "x"]


def test_truncation_and_special_tokens(bpe_path):
    tok = ClipTokenizer(bpe_path)
    ids = tok.encode(["word " * 200, "cat"])
    assert ids[0, 0] == tok.sot_token_id == SOT_TOKEN_ID == 49406
    assert ids[0, -1] == tok.eot_token_id == EOT_TOKEN_ID == 49407      # truncated: last id forced to eot
    assert (ids[0] != 0).all()
    assert tok.truncated("word " * 200) and not tok.truncated("cat")
    assert list(ids[1, :3]) == [SOT_TOKEN_ID, 2368, EOT_TOKEN_ID] and not ids[1, 3:].any()
    assert tok.encode("cat").shape == (1, 77)
    assert tok.encode([], context_length=5).shape == (0, 5)
    assert tok.decode(ids[1, 1:2]).strip() == "cat"
    with pytest.raises(TypeError):
        tok.encode(["ok", 3])


def _fake_artifact(tmp_path, bpe_path, **tok_extra):
    import shutil

    from edgeinfer.runtime.artifact import read_manifest, sha256_file, write_manifest
    from test_runtime_helpers import tiny_artifact

    d = tiny_artifact(tmp_path / "art", kind="clip")   # a valid artifact; the tokenizer added
    shutil.copy(bpe_path, d / "tokenizer_bpe.txt.gz")
    m = read_manifest(d)
    m["text"] = {"context_length": 77, "tokenizer": {
        "type": "clip_bpe", "file": "tokenizer_bpe.txt.gz",
        "sha256": sha256_file(d / "tokenizer_bpe.txt.gz"), "context_length": 77, **tok_extra}}
    write_manifest(d, m)
    return d


def test_from_artifact_and_tokenize(tmp_path, bpe_path, reference):
    d = _fake_artifact(tmp_path, bpe_path)
    tok = ClipTokenizer.from_artifact(d)
    np.testing.assert_array_equal(tok.encode(["a dog"]), reference(["a dog"]).numpy())
    np.testing.assert_array_equal(tokenize(["a dog", "ünïcödé"], d),
                                  reference(["a dog", "ünïcödé"]).numpy())


def test_from_artifact_errors(tmp_path, bpe_path):
    d = _fake_artifact(tmp_path, bpe_path)
    (d / "tokenizer_bpe.txt.gz").write_bytes(b"corrupt")
    with pytest.raises(ArtifactError, match="sha256"):
        ClipTokenizer.from_artifact(d)
    m = json.loads((d / "manifest.json").read_text())
    del m["text"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="tokenizer"):
        ClipTokenizer.from_artifact(d)
    with pytest.raises(ArtifactError, match="BPE"):
        ClipTokenizer(d / "manifest.json")


def test_works_without_torch_ftfy_regex(tmp_path, bpe_path, reference):
    """The runtime tokenizer imports and gives the same ids with torch, ftfy and regex blocked."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'ftfy', 'regex', 'open_clip'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from edgeinfer.runtime.tokenizer import ClipTokenizer
tok = ClipTokenizer({str(bpe_path)!r})
print(tok.encode({STRINGS[:12]!r}).tolist())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids = np.array(json.loads(out.stdout))
    np.testing.assert_array_equal(ids, reference(STRINGS[:12]).numpy())
