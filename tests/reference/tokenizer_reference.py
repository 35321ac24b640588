# SPDX-License-Identifier: Apache-2.0
# Reference tokenizations for tests/engine/tokenizer_reference_test.cpp, computed with the
# `tokenizers` and `sentencepiece` packages (test tooling).
#
#   tokenizer_reference.py encode KIND REQUEST.json OUT.json
#       KIND: hf-json (a tokenizer.json), llama3-vocab (encoder.json + vocab.bpe + the llama.cpp
#       "llama3" regex), gguf-gpt2 (a GGUF's byte-level vocabulary, via gguf_to_hf.py),
#       sentencepiece (a tokenizer.model).
#       REQUEST: {"paths": [...], "texts": [...], "special_tokens": [...]} (special_tokens: the
#       control tokens appended after a llama3-vocab vocabulary).
#       OUT: {"plain": [[ids]], "special": [[ids]], "decoded": [str]} — "plain" encodes special-
#       token text as text, "special" splits it out as the token, "decoded" is decode(plain) with
#       special tokens skipped. No BOS/EOS anywhere.
#   tokenizer_reference.py spm-gguf TOKENIZER.model OUT.gguf
#       Writes a GGUF whose tokenizer.ggml.* metadata (model "llama", tokens, scores, token types,
#       bos/eos/unk) is the SentencePiece model's, as llama.cpp's converter writes it.
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# llama.cpp's LLAMA3 pre-tokenizer regex (llama-vocab.cpp): Meta's pat_str with the (?i:...)
# contraction group spelled out in ASCII classes.
LLAMACPP_LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def hf_reference(tok, texts):
    tok.encode_special_tokens = True
    plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    tok.encode_special_tokens = False
    special = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    decoded = tok.decode_batch(plain, skip_special_tokens=True)
    return {"plain": plain, "special": special, "decoded": decoded}


def build_llama3(encoder_json, vocab_bpe, special_tokens):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    with open(encoder_json, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(vocab_bpe, encoding="utf-8") as f:
        merges = [tuple(line.rstrip("\n").split(" ", 1)) for line in f if line.strip() and not line.startswith("#version")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMACPP_LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    for i, t in enumerate(special_tokens):
        assert tok.token_to_id(t) == len(vocab) + i, t
    return tok


def encode(kind, request_path, out_path):
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    texts, paths = request["texts"], request["paths"]
    if kind == "hf-json":
        from tokenizers import Tokenizer
        out = hf_reference(Tokenizer.from_file(paths[0]), texts)
    elif kind == "llama3-vocab":
        out = hf_reference(build_llama3(paths[0], paths[1], request.get("special_tokens", [])), texts)
    elif kind == "gguf-gpt2":
        import gguf_to_hf
        g = gguf_to_hf.Gguf(paths[0])
        tok, _, _, _ = gguf_to_hf.build_tokenizer(g, {"bos_token_id": g.get("tokenizer.ggml.bos_token_id")})
        out = hf_reference(tok, texts)
    elif kind == "sentencepiece":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=paths[0])
        plain = [sp.encode(t) for t in texts]
        out = {"plain": plain, "special": plain, "decoded": [sp.decode(ids) for ids in plain]}
    else:
        sys.exit(f"unknown kind {kind}")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


def spm_gguf(model_path, out_path):
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w = gguf.GGUFWriter(out_path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "spm-gguf":
        spm_gguf(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: tokenizer_reference.py encode KIND REQUEST.json OUT.json | spm-gguf MODEL OUT.gguf")


if __name__ == "__main__":
    main()
