#!/usr/bin/env python3
"""tools/gen_gguf_fixture.py — writes spec/fixtures/gguf_py.gguf with pip `gguf` (llama.cpp's own
gguf-py writer and quantizers), so that CI, which lacks gguf-py, can still check our reader and our
TQ2_0 / TQ1_0 quantizers against an independent implementation.

Contents: one key of every scalar value type, string and int32/float32 arrays; tensors
  src        F32 (3, 512): random normal values (not ternary: exercises lround and d = max|x|)
  src_tq2    TQ2_0 of src (gguf.quants.quantize)
  src_tq1    TQ1_0 of src
  tern       F32 (2, 256): gamma * t, t in {-1, 0, 1}
  tern_tq2   TQ2_0 of tern,   tern_tq1  TQ1_0 of tern
  half       F16 (4, 8)
Usage: python3 tools/gen_gguf_fixture.py [out=spec/fixtures/gguf_py.gguf]
"""
import sys
import numpy as np
import gguf
from gguf.quants import quantize

out = sys.argv[1] if len(sys.argv) > 1 else "spec/fixtures/gguf_py.gguf"
rng = np.random.default_rng(7)
w = gguf.GGUFWriter(out, arch="llama")
w.add_uint8("t.u8", 200)
w.add_int8("t.i8", -100)
w.add_uint16("t.u16", 60000)
w.add_int16("t.i16", -30000)
w.add_uint32("t.u32", 4000000000)
w.add_int32("t.i32", -2000000000)
w.add_float32("t.f32", 0.15625)
w.add_bool("t.bool", True)
w.add_string("t.str", "fn main() { println!(\"héllo\"); }")
w.add_uint64("t.u64", 12345678901234)
w.add_int64("t.i64", -1234567890123)
w.add_float64("t.f64", 3.141592653589793)
w.add_array("t.strs", ["a", "Ġb", "c d"])
w.add_array("t.i32s", [1, -2, 3])
w.add_array("t.f32s", [0.5, -1.25])
src = rng.standard_normal((3, 512)).astype(np.float32)
tern = (rng.integers(-1, 2, size=(2, 256)) * 0.0371).astype(np.float32)
T = gguf.GGMLQuantizationType
w.add_tensor("src", src)
w.add_tensor("src_tq2", quantize(src, T.TQ2_0), raw_dtype=T.TQ2_0)
w.add_tensor("src_tq1", quantize(src, T.TQ1_0), raw_dtype=T.TQ1_0)
w.add_tensor("tern", tern)
w.add_tensor("tern_tq2", quantize(tern, T.TQ2_0), raw_dtype=T.TQ2_0)
w.add_tensor("tern_tq1", quantize(tern, T.TQ1_0), raw_dtype=T.TQ1_0)
w.add_tensor("half", rng.standard_normal((4, 8)).astype(np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", out)
