#!/usr/bin/env python3
"""tools/gen_tok_fixture.py — tokenizer fixtures for spec/tokenizer_spec.lua.

Writes spec/fixtures/tok_parity.json with two independent checks of core/tokenizer.c:

1. Parity with tiktoken (pip `tiktoken`): a tiktoken.Encoding is built from OUR trained
   tokenizer file (its ranks = ids, its split pattern, its special tokens) and encodes a varied
   sample (Rust, prose, unicode, emoji, CJK, whitespace runs, numbers, contractions, special-token
   look-alikes, long pieces). The spec checks that our ids equal these. Texts with invalid UTF-8
   (tiktoken only encodes str) follow our documented rule instead: every maximal run of bytes
   that are not part of a valid UTF-8 character is a piece of its own; the valid runs between
   them are encoded by tiktoken, the invalid runs by tiktoken's byte-pair merge (re-implemented
   below from its definition: merge the adjacent pair of lowest rank, leftmost first).
2. Training: a naive BPE trainer written here from the definition (recount every pair each
   step; highest count wins, ties to the smallest (left id, right id); a merge whose bytes are
   already a token is skipped) runs on small texts; the spec trains core/tokenizer.c on the same
   texts and checks the merges are identical.

Usage:
  ./nanochat tools/tok_train.lua corpus=DIR vocab=1024 out=spec/fixtures/tok_small.tok
  python3 tools/gen_tok_fixture.py [--tok spec/fixtures/tok_small.tok] [--out spec/fixtures/tok_parity.json]
The committed spec/fixtures/tok_small.tok was trained on Rust from Debian's rust-web-src
(library/core, first 3 MB) plus /usr/share/common-licenses (prose).
"""
import argparse
import base64
import json
import random
import struct
import sys

import regex  # the `regex` module: \p{..} classes and possessive quantifiers, like fancy-regex
import tiktoken


def read_tok(path):
    """Parse our tokenizer file (format in core/tokenizer.c); returns (pattern, merges, specials)."""
    d = open(path, "rb").read()
    assert d[:8] == b"NCTOKBPE", "bad magic"
    ver, nm, ns, plen = struct.unpack_from("<IIII", d, 8)
    assert ver == 1
    pos = 24
    pattern = d[pos:pos + plen].decode()
    pos += plen
    merges = [struct.unpack_from("<II", d, pos + 8 * k) for k in range(nm)]
    pos += 8 * nm
    specials = []
    for _ in range(ns):
        (n,) = struct.unpack_from("<I", d, pos)
        specials.append(d[pos + 4:pos + 4 + n].decode())
        pos += 4 + n
    h = 0xcbf29ce484222325
    for b in d[:pos]:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    (stored,) = struct.unpack_from("<Q", d, pos)
    assert stored == h and pos + 8 == len(d), "checksum / length mismatch"
    return pattern, merges, specials, "%016x" % h


def token_bytes(merges):
    toks = [bytes([i]) for i in range(256)]
    for a, b in merges:
        toks.append(toks[a] + toks[b])
    return toks


def bpe_bytes(piece, ranks):
    """tiktoken's byte_pair_merge over raw bytes (whole piece first, then lowest rank, leftmost)."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, bi = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, bi = r, i
        if bi < 0:
            break
        parts[bi:bi + 2] = [parts[bi] + parts[bi + 1]]
    return [ranks[p] for p in parts]


def utf8_runs(data):
    """Split bytes into (is_valid, bytes) maximal runs of valid UTF-8 characters / invalid bytes."""
    runs, i, n = [], 0, len(data)
    while i < n:
        L = 0
        for k in (1, 2, 3, 4):
            try:
                if len(data[i:i + k].decode("utf-8")) == 1 and i + k <= n:
                    L = k
                    break
            except UnicodeDecodeError:
                pass
        valid = L > 0
        step = L if valid else 1
        if runs and runs[-1][0] == valid:
            runs[-1][1].extend(data[i:i + step])
        else:
            runs.append((valid, bytearray(data[i:i + step])))
        i += step
    return [(v, bytes(b)) for v, b in runs]


def sample_texts():
    rust = (
        "use std::collections::HashMap;\n\n/// Counts words.\npub fn count(text: &str) -> HashMap<String, usize> {\n"
        "    let mut m = HashMap::new();\n    for w in text.split_whitespace() {\n        *m.entry(w.to_string()).or_insert(0) += 1;\n"
        "    }\n    m\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn it_works() {\n        assert_eq!(super::count(\"a a\")[\"a\"], 2);\n    }\n}\n"
    )
    texts = [
        rust,
        "impl<'a, T: ?Sized + Send> Iterator for Foo<'a, T> where T: Clone {\n\ttype Item = &'a T;\n}\r\n",
        "fn main() {\n    let x = 12345;\n    let y = 0xFF_u8 as u32 + 1_000_000;\n    println!(\"{x} {y:?}\");\n}\n",
        "The quick brown fox jumps over the lazy dog. It's 3.14159 o'clock; we'll see, they've gone, I'M here, you'D know.",
        "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. Ça va? ¿Qué tal? Ελληνικά κείμενα, русский текст.",
        "日本語のテキストと中文文本，한국어 텍스트도 있습니다。混合English和中文123。",
        "emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇩🇪🇫🇷 ❤️ ✨🚀 — and dashes – and “quotes” «guillemets»",
        "numbers 1 12 123 1234 12345 1234567890 3.5e-7 ١٢٣٤٥ ０１２３ ⅫⅣ ²³",
        "whitespace:  two   three    four\t\ttabs \n\n\n newlines \r\n\r\n crlf   \n   trailing   ",
        " " * 200 + "x" + "\n" * 70 + "\t" * 65 + " end" + " " * 100,
        "a" * 300 + " " + "ab" * 150 + " " + "Supercalifragilisticexpialidocious" * 4,
        "<|bos|> text with <|user_start|>specials<|user_end|> <|assistant_start|> inside <|endoftext|>",
        "'s 's 'S 'T 'Re 'VE 'ſ 'll ''' \"\" ``` --- === ... !!! ??? ;;; ::",
        "combining: e\u0301 a\u0300 n\u0303; nbsp:\u00a0x em\u2003space ideographic\u3000space nel\u0085x vt\u000bff\u000c ls\u2028ps\u2029",
        "mixed\u00a0\u00a0  \u2003\n\u3000end",
        "",
        "x",
        " ",
        "\n",
    ]
    rng = random.Random(1234)
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0x1F600, 0x1F64F), (0x2000, 0x206F),
              (0x2190, 0x21FF), (0x30, 0x39)]
    for _ in range(12):
        s = []
        for _ in range(rng.randint(20, 120)):
            lo, hi = rng.choice(blocks)
            s.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.2:
                s.append(rng.choice([" ", "  ", "\n", "\t", " \n", "'s", "123"]))
        texts.append("".join(s))
    return texts


def invalid_texts():
    rng = random.Random(99)
    out = [
        b"\xff",
        b"abc\xffdef",
        b"\xe2\x82 truncated euro then valid \xe2\x82\xac",
        b"\xf0\x9f\x98 broken emoji \xf0\x9f\x98\x80 ok",
        b"surrogate \xed\xa0\x80 overlong \xc0\xaf \xe0\x80\xaf end",
        b"  \xff  \xfe\xfe\n\n\xc3",
        b"fn f() {\n    let s = \"\x80\x81\x82\";\n}\n",
        bytes(range(256)),
    ]
    for _ in range(6):
        out.append(bytes(rng.randrange(256) for _ in range(rng.randint(10, 200))))
    return out


# ---- naive BPE trainer (reference for the training check) ------------------------------------------
def naive_train(texts, pattern, n_merges):
    pat = regex.compile(pattern)
    words = {}
    for t in texts:
        for doc in t.split("\0"):
            for m in pat.finditer(doc):
                b = m.group(0).encode()
                words[b] = words.get(b, 0) + 1
    seqs = [[list(w), c] for w, c in words.items() if len(w) >= 2]
    toks = [bytes([i]) for i in range(256)]
    vocab = set(toks)
    banned = set()
    merges = []
    while len(merges) < n_merges:
        counts = {}
        for s, c in seqs:
            for i in range(len(s) - 1):
                p = (s[i], s[i + 1])
                counts[p] = counts.get(p, 0) + c
        best = None
        for p, c in counts.items():
            if c <= 0 or p in banned:
                continue
            if best is None or c > best[1] or (c == best[1] and p < best[0]):
                best = (p, c)
        if best is None:
            break
        (a, b), _ = best
        nb = toks[a] + toks[b]
        if nb in vocab:
            banned.add((a, b))
            continue
        new = len(toks)
        toks.append(nb)
        vocab.add(nb)
        merges.append([a, b])
        for s in seqs:
            w, i, out = s[0], 0, []
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            s[0] = out
    return merges


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tok", default="spec/fixtures/tok_small.tok")
    ap.add_argument("--out", default="spec/fixtures/tok_parity.json")
    args = ap.parse_args()

    pattern, merges, specials, h = read_tok(args.tok)
    toks = token_bytes(merges)
    ranks = {b: i for i, b in enumerate(toks)}
    assert len(ranks) == len(toks), "token bytes must be unique"
    base = len(toks)
    enc = tiktoken.Encoding(name="nanochat_fixture", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={s: base + i for i, s in enumerate(specials)})

    cases = []
    for t in sample_texts():
        ids = enc.encode_ordinary(t)
        assert enc.decode_bytes(ids) == t.encode()
        cases.append({"kind": "tiktoken", "b64": base64.b64encode(t.encode()).decode(), "ids": ids})
    for data in invalid_texts():
        ids = []
        for valid, run in utf8_runs(data):
            ids += enc.encode_ordinary(run.decode()) if valid else bpe_bytes(run, ranks)
        assert b"".join(toks[i] for i in ids) == data
        cases.append({"kind": "invalid-utf8-rule", "b64": base64.b64encode(data).decode(), "ids": ids})
    # a specials check straight from tiktoken: the special strings only become ids when allowed
    allowed = enc.encode("<|bos|>", allowed_special="all")
    assert allowed == [base], allowed

    train_texts = [
        sample_texts()[0], sample_texts()[1], sample_texts()[2], sample_texts()[3],
        "fn add(a: i32, b: i32) -> i32 { a + b }\nfn sub(a: i32, b: i32) -> i32 { a - b }\n" * 3,
        "the cat sat on the mat; the dog sat on the log.\n\0the end\0 aaaa bbbb aaaa abab abab",
    ]
    n_train = 120
    train_merges = naive_train(train_texts, pattern, n_train)

    out = {
        "generator": "tools/gen_tok_fixture.py",
        "tiktoken_version": tiktoken.__version__,
        "tokenizer": args.tok,
        "tokenizer_hash": h,
        "vocab_size": base + len(specials),
        "cases": cases,
        "train": {"texts": train_texts, "vocab": 256 + len(specials) + n_train, "merges": train_merges},
    }
    with open(args.out, "w") as f:
        json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print("wrote %s: %d cases, %d training merges (tokenizer %s, hash %s)"
          % (args.out, len(cases), len(train_merges), args.tok, h), file=sys.stderr)


if __name__ == "__main__":
    main()
