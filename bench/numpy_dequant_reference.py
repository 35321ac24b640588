# SPDX-License-Identifier: Apache-2.0
# Rough reference point for bench_readers' BM_Dequantize: the `gguf` Python package's numpy
# dequantizers on a 4096x4096 tensor of random blocks built the same way (random quants, small
# finite fp16 scales). numpy, not llama.cpp: llama.cpp's own dequantizers are the real peer.
#
#   .venv/bin/python bench/numpy_dequant_reference.py [--repeats 5]
import argparse
import time

import numpy as np

from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROWS, COLS = 4096, 4096
# Byte offsets of the fp16 scale fields in one block, as in bench_readers.cpp.
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q6_K: [208], T.F16: [0]}


def random_blocks(qtype):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(1234 + int(qtype))
    n_blocks = ROWS * COLS // block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    sigma = 0.05 if qtype == T.F16 else 0.002
    for offset in F16_FIELDS[qtype]:
        scales = rng.normal(0.0, sigma, size=n_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(ROWS, COLS // block_elems * block_bytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = ROWS * COLS
    print(f"{'type':6} {'best ms':>9} {'G elem/s':>9} {'GB/s out':>9}")
    for qtype in F16_FIELDS:
        data = random_blocks(qtype)
        out = dequantize(data, qtype)
        assert out.shape == (ROWS, COLS) and out.dtype == np.float32 and np.isfinite(out).all(), qtype.name
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            dequantize(data, qtype)
            best = min(best, time.perf_counter() - t0)
        print(f"{qtype.name:6} {best * 1e3:9.1f} {n / best / 1e9:9.3f} {4 * n / best / 1e9:9.2f}")


if __name__ == "__main__":
    main()
