#!/usr/bin/env python3
"""Cache interoperability of @x/phi2's Hub downloads with Python's huggingface_hub (run by hand).

    python3 -m venv /tmp/hubvenv && /tmp/hubvenv/bin/pip install huggingface_hub
    npm run build -w @x/phi2          # and the fixtures: target/release/phi2-fixtures --out test/fixtures/gen
    /tmp/hubvenv/bin/python scripts/hub_interop.py [--fixtures test/fixtures/gen] [--out scripts/hub_interop.out.json]

Starts the loopback Hub of the tests (packages/phi2/test/hub-server.mjs) and, with HF_ENDPOINT
pointing at it:
1. huggingface_hub downloads into cache A (hf_hub_download of a GGUF at main and at tag v1,
   snapshot_download of the safetensors repository); then @x/phi2 loads the same ids from cache A
   with HF_HUB_OFFLINE=1 (no request possible) and online (nothing new may be downloaded);
2. @x/phi2 downloads the same ids into cache B; then huggingface_hub finds them in B
   (try_to_load_from_cache, hf_hub_download(local_files_only=True), scan_cache_dir);
3. the two caches' layouts are compared entry by entry (paths, symlink targets, refs; blob names
   checked against their content's sha256 / git sha1).
Writes the findings (small JSON) to --out; packages/phi2/test/hub-interop.test.ts asserts the
committed layout against what @x/phi2 writes, and that it loads a cache in Python's layout.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF_REPO, GGUF_FILE, ST_REPO = "test-org/tiny-gguf", "tiny.Q8_0.gguf", "test-org/tiny"
NODE_IDS = [
    {"source": f"hf:{GGUF_REPO}/{GGUF_FILE}"},
    {"source": f"hf:{GGUF_REPO}/{GGUF_FILE}", "revision": "v1"},
    {"source": ST_REPO},
]


def blob_kind(path, name):
    data = open(path, "rb").read()
    if len(name) == 64 and hashlib.sha256(data).hexdigest() == name:
        return "sha256"
    if len(name) == 40 and hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == name:
        return "git-sha1"
    return "unverified"


def layout(cache):
    """Sorted entries: symlinks with targets, blobs with the hash their name verifies as, refs with content,
    CACHEDIR.TAG's signature line. Blob names are replaced by the kind of hash they are (the same
    normalisation as packages/phi2/test/hub-interop.test.ts). huggingface_hub 2.x's own listing cache
    (models--*/trees/<commit>.json) is left out: @x/phi2 does not write it (Python does not need it)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(cache):
        rel_dir = os.path.relpath(dirpath, cache)
        if rel_dir.split(os.sep)[0] == ".locks":
            continue
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, cache).replace(os.sep, "/")
            parts = rel.split("/")
            if len(parts) >= 3 and parts[1] == "trees":
                continue
            if rel == "CACHEDIR.TAG":
                out.append(f"F {rel} = {open(p).readline().strip()}")
            elif os.path.islink(p):
                target = os.readlink(p)
                name = target.rsplit("/", 1)[-1]
                kind = blob_kind(os.path.realpath(p), name)
                out.append(f"L {rel} -> {target.rsplit('/', 1)[0]}/<{kind}>")
            elif len(parts) >= 3 and parts[1] == "blobs":
                out.append(f"B {parts[0]}/blobs/<{blob_kind(p, parts[2])}>")
            else:
                out.append(f"F {rel} = {open(p).read()}")
    return sorted(out)


def node_load(cache, env, offline):
    script = """
const { loadModel } = await import(process.argv[1])
const out = []
for (const { source, revision } of JSON.parse(process.argv[2])) {
  const m = await loadModel(source, revision ? { revision } : {})
  out.push({ source, revision: revision ?? null, path: m.info.source, tokens: (await m.generate('Hello', { maxNewTokens: 4 })).tokens })
  m.dispose()
}
console.log(JSON.stringify(out))
"""
    e = dict(env, HF_HUB_CACHE=cache)
    if offline:
        e["HF_HUB_OFFLINE"] = "1"
    else:
        e.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run(
        ["node", "--input-type=module", "-e", script, os.path.join(ROOT, "packages/phi2/dist/index.js"), json.dumps(NODE_IDS)],
        env=e, capture_output=True, text=True,
    )
    if r.returncode != 0:
        raise SystemExit(f"node load failed ({'offline' if offline else 'online'}):\n{r.stderr}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for x in res:
        x["path"] = os.path.relpath(x["path"], cache)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "test/fixtures/gen"))
    ap.add_argument("--out", default=os.path.join(ROOT, "scripts/hub_interop.out.json"))
    args = ap.parse_args()

    server = subprocess.Popen(
        ["node", os.path.join(ROOT, "packages/phi2/test/hub-server.mjs"), os.path.abspath(args.fixtures)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        info = json.loads(server.stdout.readline())
        endpoint = info["endpoint"]
        tmp = tempfile.mkdtemp(prefix="hub-interop-")
        cache_a, cache_b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   HF_HOME=os.path.join(tmp, "home"))
        env.pop("HF_TOKEN", None)
        os.environ.update(env)
        os.environ.pop("HF_HUB_OFFLINE", None)
        # huggingface_hub reads HF_ENDPOINT when it is imported.
        import huggingface_hub
        from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download, try_to_load_from_cache

        # 1. Python first, then @x/phi2 from its cache.
        py_paths = {
            "gguf_main": hf_hub_download(GGUF_REPO, GGUF_FILE, cache_dir=cache_a),
            "gguf_v1": hf_hub_download(GGUF_REPO, GGUF_FILE, revision="v1", cache_dir=cache_a),
            "safetensors": snapshot_download(ST_REPO, allow_patterns=["config.json", "*.safetensors"], cache_dir=cache_a),
        }
        before = layout(cache_a)
        node_offline = node_load(cache_a, env, offline=True)
        node_online = node_load(cache_a, env, offline=False)
        after = layout(cache_a)

        # 2. @x/phi2 first, then Python from its cache.
        node_first = node_load(cache_b, env, offline=False)
        layout_b = layout(cache_b)
        found = {
            "gguf_main": try_to_load_from_cache(GGUF_REPO, GGUF_FILE, cache_dir=cache_b),
            "gguf_v1": try_to_load_from_cache(GGUF_REPO, GGUF_FILE, revision="v1", cache_dir=cache_b),
            "config": try_to_load_from_cache(ST_REPO, "config.json", cache_dir=cache_b),
            "weights": try_to_load_from_cache(ST_REPO, "model.safetensors", cache_dir=cache_b),
        }
        local_only = hf_hub_download(GGUF_REPO, GGUF_FILE, cache_dir=cache_b, local_files_only=True)
        scan = scan_cache_dir(cache_b)
        scanned = sorted(
            [
                {
                    "repo_id": r.repo_id,
                    "repo_type": r.repo_type,
                    "revisions": sorted(
                        [{"commit": rev.commit_hash, "refs": sorted(rev.refs), "files": sorted(f.file_name for f in rev.files)} for rev in r.revisions],
                        key=lambda x: x["commit"],
                    ),
                    "size_on_disk": r.size_on_disk,
                }
                for r in scan.repos
            ],
            key=lambda x: x["repo_id"],
        )

        def rel(p, cache):
            return os.path.relpath(p, cache) if isinstance(p, str) else p

        result = {
            "huggingface_hub": huggingface_hub.__version__,
            "python_layout": before,
            "node_layout": layout_b,
            "layouts_identical": before == layout_b,
            "python_cache_unchanged_by_node_loads": before == after,
            "python_downloads": {k: rel(v, cache_a) for k, v in py_paths.items()},
            "node_offline_from_python_cache": node_offline,
            "node_online_from_python_cache": node_online,
            "node_downloads": node_first,
            "python_try_to_load_from_cache_on_node_cache": {k: rel(v, cache_b) for k, v in found.items()},
            "python_local_files_only_on_node_cache": rel(local_only, cache_b),
            "python_scan_cache_dir_on_node_cache": scanned,
            "python_scan_warnings": [str(w) for w in scan.warnings],
        }
        ok = (
            result["layouts_identical"]
            and result["python_cache_unchanged_by_node_loads"]
            and all(v for v in found.values())
            and not scan.warnings
            and node_offline == node_online == node_first
        )
        result["ok"] = bool(ok)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.write("\n")
        print(json.dumps({"ok": result["ok"], "out": os.path.relpath(args.out, ROOT)}))
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
