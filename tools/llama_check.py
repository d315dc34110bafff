#!/usr/bin/env python3
"""tools/llama_check.py — load a GGUF written by `nanochat export` with llama.cpp (pip
llama-cpp-python) and evaluate it.

    python3 tools/llama_check.py MODEL.gguf [--ids 1,5,9 | --prompt TEXT] [--greedy N] [--kv-f32] [--tokenize TEXT | --tokenize-file F]

Prints, per prompt position, the top-5 tokens with their logits, then the greedy continuation,
and as the LAST line one JSON object:
    {"n_vocab": V, "ids": [...], "logits": [[V floats] per position], "greedy": [...],
     "tokenized": [...] (llama.cpp's ids for --tokenize TEXT, no BOS, specials not parsed)}
spec/models/llama_cpp_spec.lua compares that with our engine. Exit 2 when llama_cpp is missing.
"""
import argparse
import time
import json
import sys

try:
    import numpy as np
    import llama_cpp
except ImportError as err:  # the spec skips on exit code 2
    print(f"llama_check: llama_cpp not importable: {err}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ids", help="comma-separated prompt token ids (no BOS added)")
    ap.add_argument("--prompt", help="prompt text (tokenized by llama.cpp, BOS per the file)")
    ap.add_argument("--greedy", type=int, default=0, help="greedy tokens to generate after the prompt")
    ap.add_argument("--tokenize", help="text to tokenize with the file's tokenizer")
    ap.add_argument("--tokenize-file", help="a file whose bytes are tokenized (as --tokenize)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kv-f32", action="store_true", help="F32 K/V cache instead of llama.cpp's default F16")
    ap.add_argument("--bench", type=int, default=0,
                    help="after the prompt: time this many single-token greedy evals (decode_tok_s in the JSON)")
    a = ap.parse_args()

    kw = {}
    if a.kv_f32:
        kw = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=256, n_batch=256, n_threads=a.threads,
                          logits_all=True, verbose=False, **kw)
    n_vocab = llm.n_vocab()
    out = {"n_vocab": n_vocab}
    if a.tokenize_file is not None:
        with open(a.tokenize_file, "rb") as fh:
            out["tokenized"] = llm.tokenize(fh.read(), add_bos=False, special=False)
    elif a.tokenize is not None:
        out["tokenized"] = llm.tokenize(a.tokenize.encode("utf-8"), add_bos=False, special=False)
    ids = []
    if a.ids:
        ids = [int(x) for x in a.ids.split(",") if x.strip()]
    elif a.prompt is not None:
        ids = llm.tokenize(a.prompt.encode("utf-8"), add_bos=True, special=False)
    out["ids"] = ids
    if ids:
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
        out["logits"] = logits.tolist()
        for t, row in enumerate(logits):
            top = np.argsort(-row)[:5]
            print(f"pos {t:3d} id {ids[t]:6d} | " + "  ".join(f"{int(j)}:{row[j]:.3f}" for j in top))
        greedy = []
        for _ in range(a.greedy):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            llm.eval([nxt])
        out["greedy"] = greedy
        if greedy:
            print("greedy:", greedy)
        if a.bench > 0:   # decode speed: one token per eval, wall clock (the prompt already in the cache)
            t0 = time.perf_counter()
            for _ in range(a.bench):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
            out["decode_tok_s"] = a.bench / (time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
