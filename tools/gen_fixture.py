#!/usr/bin/env python3
"""tools/gen_fixture.py -- independent reference fixtures for nanochat's end-to-end and I/O specs.

Run from the repository root:

    python3 tools/gen_fixture.py > spec/fixtures/composite.json     # composite model (needs torch)
    python3 tools/gen_fixture.py spec/fixtures/composite.json       # same, to a path
    python3 tools/gen_fixture.py --safetensors spec/fixtures/py_written.safetensors   # stdlib only
    python3 tools/gen_fixture.py --all           # both files into spec/fixtures/
    python3 tools/gen_fixture.py --dump FILE.safetensors   # print a safetensors file as JSON (stdlib only;
                                                           # spec/io_spec.lua reads our files back with it)

torch is pip `torch` or Debian `python3-torch`; the safetensors writer/reader uses only the Python
standard library (struct, json), so it is independent of both numpy and nanochat's C writer.

The composite (design.md, numerics check (d)): token ids (B=2, T=7), vocab V=11, d=16, H=4 query
heads, Hkv=2 kv heads (GQA), head dim D=4, MLP hidden 32:

    x = wte[ids]
    h = rmsnorm(x)                                   (no weight, eps 1e-6)
    q, k, v = h Wq^T, h Wk^T, h Wv^T  -> (B,T,H,D), (B,T,Hkv,D), (B,T,Hkv,D)
    q, k = rope(q), rope(k)                          (half-split, base 10000, theta_i = base^(-2i/D))
    a = causal softmax attention, scale 1/sqrt(D), query head j uses kv head j // (H/Hkv)
    x = x + a Wo^T
    x = x + relu(rmsnorm(x) W1^T)^2 W2^T
    logits = rmsnorm(x) Wout^T
    loss = cross_entropy(logits, targets, ignore_index=-1, label_smoothing=0.1) + 1e-4 * mean(lse^2)
           (the z-loss mean runs over the non-ignored targets)

The weights are float32 values drawn with a fixed seed; the reference forward/backward runs in float64
on exactly those values, so the only error nanochat's float32 kernels are measured against is their
own. The fixture also records 10 steps of plain SGD (lr 0.1): losses[i] is the loss before update i.
Floats are written with 9 significant digits (round-trips float32 exactly).
"""
import json
import math
import os
import struct
import sys

# ---- composite configuration ----------------------------------------------------------------------
CFG = dict(B=2, T=7, V=11, d=16, H=4, Hkv=2, D=4, hidden=32, eps=1e-6, rope_base=10000.0,
           label_smoothing=0.1, z_loss=1e-4, ignore_index=-1, lr=0.1, steps=10, seed=1234)
WEIGHT_ORDER = ["wte", "wq", "wk", "wv", "wo", "w1", "w2", "wout"]


def r9(x):
    """9 significant digits: exact for float32 values, ~1e-9 relative for float64 references."""
    return float("%.9g" % x)


def flat(t):
    return [r9(v) for v in t.detach().reshape(-1).tolist()]


def composite_fixture():
    import torch

    c = CFG
    B, T, V, d, H, Hkv, D, F = c["B"], c["T"], c["V"], c["d"], c["H"], c["Hkv"], c["D"], c["hidden"]
    g = torch.Generator().manual_seed(c["seed"])

    def uni(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * bound

    w32 = {
        "wte": torch.randn((V, d), generator=g, dtype=torch.float32),
        "wq": uni((H * D, d), d),
        "wk": uni((Hkv * D, d), d),
        "wv": uni((Hkv * D, d), d),
        "wo": uni((d, H * D), H * D),
        "w1": uni((F, d), d),
        "w2": uni((d, F), F),
        "wout": uni((V, d), d),
    }
    # The values the fixture stores (9 digits) are exactly these float32 numbers.
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 3] = c["ignore_index"]

    # RoPE tables for positions 0..T-1 (float64)
    inv = c["rope_base"] ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2 / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()   # (T, D/2)

    def rmsnorm(x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + c["eps"])

    def rope(x):   # x (B, T, h, D)
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        cs, sn = cos[None, :, None, :], sin[None, :, None, :]
        return torch.cat([x1 * cs + x2 * sn, -x1 * sn + x2 * cs], dim=-1)

    def forward(w):
        x = w["wte"][ids]                                     # (B, T, d)
        h = rmsnorm(x)
        q = (h @ w["wq"].T).view(B, T, H, D)
        k = (h @ w["wk"].T).view(B, T, Hkv, D)
        v = (h @ w["wv"].T).view(B, T, Hkv, D)
        q, k = rope(q), rope(k)
        rep = H // Hkv
        qh = q.transpose(1, 2)                                # (B, H, T, D)
        kh = k.repeat_interleave(rep, dim=2).transpose(1, 2)  # head j -> kv head j // rep
        vh = v.repeat_interleave(rep, dim=2).transpose(1, 2)
        s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D)        # (B, H, T, T)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        s = s.masked_fill(~mask, float("-inf"))
        a = (s.softmax(-1) @ vh).transpose(1, 2).reshape(B, T, H * D)
        x = x + a @ w["wo"].T
        m = torch.relu(rmsnorm(x) @ w["w1"].T) ** 2
        x = x + m @ w["w2"].T
        logits = rmsnorm(x) @ w["wout"].T                     # (B, T, V)
        lf, tf = logits.reshape(-1, V), targets.reshape(-1)
        ce = torch.nn.functional.cross_entropy(lf, tf, ignore_index=c["ignore_index"],
                                               label_smoothing=c["label_smoothing"])
        keep = tf != c["ignore_index"]
        lse = torch.logsumexp(lf[keep], dim=-1)
        loss = ce + c["z_loss"] * (lse * lse).mean()
        return logits, loss

    w = {k: v.to(torch.float64).requires_grad_(True) for k, v in w32.items()}
    logits, loss = forward(w)
    loss.backward()
    grads = {k: w[k].grad.clone() for k in WEIGHT_ORDER}

    # 10 steps of plain SGD from the same weights
    ws = {k: v.to(torch.float64).requires_grad_(True) for k, v in w32.items()}
    losses = []
    for _ in range(c["steps"]):
        _, l = forward(ws)
        losses.append(r9(l.item()))
        for p in ws.values():
            p.grad = None
        l.backward()
        with torch.no_grad():
            for p in ws.values():
                p -= c["lr"] * p.grad

    def entry(t):
        return {"shape": list(t.shape), "data": flat(t)}

    return {
        "about": "generated by tools/gen_fixture.py with torch " + torch.__version__ +
                 "; float64 reference on float32 weights",
        "config": CFG,
        "ids": ids.tolist(),
        "targets": targets.tolist(),
        "weight_order": WEIGHT_ORDER,
        "weights": {k: entry(w32[k]) for k in WEIGHT_ORDER},
        "logits": entry(logits),
        "loss": r9(loss.item()),
        "grads": {k: entry(grads[k]) for k in WEIGHT_ORDER},
        "losses": losses,
    }


def write_json(obj, out):
    # one line per top-level key keeps diffs readable and the file small
    out.write("{\n")
    keys = list(obj.keys())
    for i, k in enumerate(keys):
        out.write(json.dumps(k) + ": " + json.dumps(obj[k], separators=(",", ":")))
        out.write(",\n" if i + 1 < len(keys) else "\n")
    out.write("}\n")


# ---- safetensors with the standard library only ---------------------------------------------------
ST_FMT = {"F32": ("f", 4), "F64": ("d", 8), "F16": ("e", 2), "I8": ("b", 1), "I32": ("i", 4),
          "I64": ("q", 8), "U8": ("B", 1), "BF16": (None, 2), "BOOL": ("?", 1)}


def pack_values(dtype, values):
    fmt, _ = ST_FMT[dtype]
    if dtype == "BF16":   # upper half of the float32 bit pattern (the values below are exact in bf16)
        return b"".join(struct.pack("<H", struct.unpack("<I", struct.pack("<f", v))[0] >> 16) for v in values)
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def unpack_values(dtype, raw):
    fmt, size = ST_FMT[dtype]
    n = len(raw) // size
    if dtype == "BF16":
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in struct.unpack("<%dH" % n, raw)]
    return list(struct.unpack("<%d%s" % (n, fmt), raw))


# name -> (dtype, shape, values). The header lists them in this (unsorted) order while the data
# is laid out in DATA_ORDER, so a reader must follow data_offsets rather than header order.
PY_TENSORS = {
    "weight.f32": ("F32", [2, 3], [0.5, -1.25, 3.0, 0.125, -7.5, 1024.0]),
    "ids.i64": ("I64", [4], [0, -1, 2 ** 40, -(2 ** 33) + 5]),
    "scalar.f64": ("F64", [], [3.141592653589793]),
    "empty.u8": ("U8", [0, 3], []),
    "half.f16": ("F16", [3], [1.5, -2.0, 65504.0]),
    "brain.bf16": ("BF16", [2, 2], [1.0, -0.5, 256.0, 0.0078125]),
    "bytes.i8": ("I8", [5], [-128, -1, 0, 1, 127]),
    "ints.i32": ("I32", [2, 2], [-2147483648, 2147483647, 7, -7]),
    "flags.u8": ("U8", [3], [0, 1, 255]),
}
DATA_ORDER = ["ints.i32", "scalar.f64", "brain.bf16", "weight.f32", "empty.u8", "bytes.i8",
              "ids.i64", "half.f16", "flags.u8"]
PY_METADATA = {"format": "pt", "written_by": "tools/gen_fixture.py (python struct)"}


def write_py_safetensors(path):
    blobs, offsets, pos = {}, {}, 0
    for name in DATA_ORDER:
        dtype, shape, values = PY_TENSORS[name]
        blob = pack_values(dtype, values)
        blobs[name] = blob
        offsets[name] = [pos, pos + len(blob)]
        pos += len(blob)
    header = {"__metadata__": PY_METADATA}
    for name, (dtype, shape, _) in PY_TENSORS.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets[name]}
    hb = json.dumps(header).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in DATA_ORDER:
            f.write(blobs[name])


def dump_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    out = {"metadata": header.pop("__metadata__", {}), "header_len": n, "tensors": {}}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out["tensors"][name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [b, end],
                                "data": unpack_values(e["dtype"], data[b:end])}
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.join(os.path.dirname(here), "spec", "fixtures")
    if argv and argv[0] == "--dump":
        dump_safetensors(argv[1])
    elif argv and argv[0] == "--safetensors":
        write_py_safetensors(argv[1] if len(argv) > 1 else os.path.join(fixtures, "py_written.safetensors"))
    elif argv and argv[0] == "--all":
        write_py_safetensors(os.path.join(fixtures, "py_written.safetensors"))
        with open(os.path.join(fixtures, "composite.json"), "w") as f:
            write_json(composite_fixture(), f)
    elif argv and argv[0] in ("-h", "--help"):
        print(__doc__)
    elif argv:
        with open(argv[0], "w") as f:
            write_json(composite_fixture(), f)
    else:
        write_json(composite_fixture(), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
