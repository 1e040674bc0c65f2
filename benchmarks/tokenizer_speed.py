"""How fast is course_lib's byte-level BPE? Train on Tiny Shakespeare, then encode all of it.

    python benchmarks/tokenizer_speed.py [--vocab-size 512]

Prints the figures; the last line is one JSON object with them. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from course_lib.data import load_text
from course_lib.tokenizers import BPETokenizer, compression_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args()

    text = load_text("tinyshakespeare")
    n_bytes = len(text.encode("utf-8"))

    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, vocab_size=args.vocab_size)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ids = tok.encode(text)  # cold cache: every distinct chunk is encoded once
    encode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok.encode(text)  # warm cache: chunks are looked up
    encode_warm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if tok.decode(ids) != text:  # a correctness check, not a timing one
        raise SystemExit("round trip failed: decode(encode(text)) != text")
    decode_s = time.perf_counter() - t0

    results = {
        "benchmark": "tokenizer_speed",
        "machine": platform.processor() or platform.machine(),
        "text_bytes": n_bytes,
        "vocab_size": tok.vocab_size,
        "train_s": round(train_s, 3),
        "encode_s": round(encode_s, 3),
        "encode_warm_s": round(encode_warm_s, 3),
        "decode_s": round(decode_s, 3),
        "n_tokens": len(ids),
        "tokens_per_byte": round(compression_ratio(tok, text), 4),
    }
    print(f"Tiny Shakespeare: {n_bytes:,} bytes; BPE vocab_size={tok.vocab_size}")
    print(f"train:  {train_s:6.2f} s")
    print(f"encode: {encode_s:6.2f} s cold cache, {encode_warm_s:.2f} s warm "
          f"({n_bytes / encode_s / 1e6:.2f} MB/s cold)")
    print(f"decode: {decode_s:6.2f} s")
    print(f"tokens: {len(ids):,} = {results['tokens_per_byte']} tokens per byte")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
