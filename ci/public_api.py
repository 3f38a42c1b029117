#!/usr/bin/env python3
"""List the public API of a crate from rustdoc's JSON output, one item per line, sorted.

    python3 ci/public_api.py target/doc/blobcask.json > engine/public-api.txt

Until a release is published for `cargo semver-checks` to compare against, CI compares this
listing with the checked-in one: a change to the public API shows as a diff that must be
committed (with its CHANGELOG line), never slips in unnoticed.
"""
import json
import sys


def main():
    doc = json.load(open(sys.argv[1]))
    index = doc["index"]
    lines = set()

    def item(i):
        return index.get(str(i)) if isinstance(i, int) else index.get(i)

    def path_name(p):
        known = doc["paths"].get(str(p.get("id")))
        if known:
            return "::".join(known["path"])
        return p.get("path") or p.get("name") or "?"

    def generic_args(a):
        if not a:
            return ""
        if "angle_bracketed" in a:
            ab = a["angle_bracketed"]
            parts = []
            for g in ab.get("args", []):
                if "type" in g:
                    parts.append(ty(g["type"]))
                elif "lifetime" in g:
                    parts.append(g["lifetime"])
                elif "const" in g:
                    parts.append(str(g["const"].get("expr", "_")))
                else:
                    parts.append("_")
            for c in ab.get("constraints", []):
                b = c.get("binding", {})
                if "equality" in b:
                    t = b["equality"]
                    parts.append(f"{c['name']} = {ty(t['type']) if 'type' in t else '_'}")
                else:
                    parts.append(f"{c['name']}: {bounds(b.get('constraint', []))}")
            return "<" + ", ".join(parts) + ">" if parts else ""
        if "parenthesized" in a:
            p = a["parenthesized"]
            out = "(" + ", ".join(ty(t) for t in p.get("inputs", [])) + ")"
            if p.get("output"):
                out += " -> " + ty(p["output"])
            return out
        return ""

    def bounds(bs):
        out = []
        for b in bs:
            if "trait_bound" in b:
                tb = b["trait_bound"]
                t = tb["trait"]
                mod = "?" if tb.get("modifier") == "maybe" else ""
                out.append(mod + path_name(t) + generic_args(t.get("args")))
            elif "outlives" in b:
                out.append(b["outlives"])
            else:
                out.append("use<..>")
        return " + ".join(out)

    def ty(t):
        if t is None:
            return "()"
        (k, v), = t.items()
        if k == "resolved_path":
            return path_name(v) + generic_args(v.get("args"))
        if k == "generic":
            return v
        if k == "primitive":
            return v
        if k == "tuple":
            return "(" + ", ".join(ty(x) for x in v) + ")"
        if k == "slice":
            return "[" + ty(v) + "]"
        if k == "array":
            return f"[{ty(v['type'])}; {v['len']}]"
        if k == "borrowed_ref":
            lt = (v["lifetime"] + " ") if v.get("lifetime") else ""
            return "&" + lt + ("mut " if v["is_mutable"] else "") + ty(v["type"])
        if k == "raw_pointer":
            return ("*mut " if v["is_mutable"] else "*const ") + ty(v["type"])
        if k == "impl_trait":
            return "impl " + bounds(v)
        if k == "dyn_trait":
            return "dyn " + " + ".join(
                path_name(x["trait"]) + generic_args(x["trait"].get("args")) for x in v["traits"]
            )
        if k == "qualified_path":
            tr = v.get("trait")
            base = ty(v["self_type"])
            if tr:
                base = f"<{base} as {path_name(tr)}>"
            return f"{base}::{v['name']}"
        if k == "function_pointer":
            sig = v["sig"]
            return "fn(" + ", ".join(ty(x[1]) for x in sig["inputs"]) + ")" + (
                " -> " + ty(sig["output"]) if sig.get("output") else ""
            )
        return k

    def generics(g):
        ps = []
        for p in g.get("params", []):
            kind = p["kind"]
            if "lifetime" in kind:
                ps.append(p["name"])
            elif "type" in kind:
                if kind["type"].get("is_synthetic"):
                    continue
                b = bounds(kind["type"].get("bounds", []))
                d = kind["type"].get("default")
                ps.append(p["name"] + (": " + b if b else "") + (" = " + ty(d) if d else ""))
            elif "const" in kind:
                ps.append(f"const {p['name']}: {ty(kind['const']['type'])}")
        return "<" + ", ".join(ps) + ">" if ps else ""

    def sig(name, f):
        s = f["sig"]
        h = f.get("header", {})
        pre = ("const " if h.get("is_const") else "") + ("async " if h.get("is_async") else "")
        pre += "unsafe " if h.get("is_unsafe") else ""
        args = []
        for n, t in s["inputs"]:
            if n == "self":
                args.append({"&Self": "&self", "&mut Self": "&mut self", "Self": "self"}.get(ty(t), "self: " + ty(t)))
            else:
                args.append(f"{n}: {ty(t)}")
        out = f"{pre}fn {name}{generics(f['generics'])}({', '.join(args)})"
        if s.get("output"):
            out += " -> " + ty(s["output"])
        return out

    seen = set()

    def walk(i, prefix):
        it = item(i)
        if it is None or (i, prefix) in seen:
            return
        seen.add((i, prefix))
        inner = it["inner"]
        (kind, v), = inner.items()
        name = it.get("name")
        here = f"{prefix}::{name}" if name else prefix
        if kind == "module":
            if prefix:
                lines.add(f"mod {here}")
            for c in v["items"]:
                ci = item(c)
                if ci is not None and ci.get("visibility") == "public":
                    walk(c, here if prefix else name)
        elif kind == "use":
            target = v.get("id")
            if target is None or item(target) is None:
                lines.add(f"pub use {prefix}::{v['name']} = {v['source']}")
                return
            if v.get("is_glob"):
                t = item(target)
                if "module" in t["inner"]:
                    for c in t["inner"]["module"]["items"]:
                        ci = item(c)
                        if ci is not None and ci.get("visibility") == "public":
                            walk(c, prefix)
                return
            t = dict(item(target))
            t["name"] = v["name"]
            index["__use_" + str(target) + v["name"]] = t
            walk("__use_" + str(target) + v["name"], prefix)
        elif kind == "function":
            lines.add(sig(here, v))
        elif kind in ("struct", "enum", "union", "trait"):
            lines.add(f"{kind} {here}{generics(v.get('generics', {}))}")
            if kind == "struct":
                sk = v["kind"]
                if isinstance(sk, dict) and "plain" in sk:
                    for fid in sk["plain"]["fields"]:
                        f = item(fid)
                        if f and f.get("visibility") == "public":
                            lines.add(f"field {here}::{f['name']}: {ty(f['inner']['struct_field'])}")
                elif isinstance(sk, dict) and "tuple" in sk:
                    fs = [ty(item(fid)["inner"]["struct_field"]) if fid is not None and item(fid) else "_" for fid in sk["tuple"]]
                    lines.add(f"tuple {here}({', '.join(fs)})")
            if kind == "enum":
                for vid in v["variants"]:
                    var = item(vid)
                    vk = var["inner"]["variant"]["kind"]
                    desc = ""
                    if isinstance(vk, dict) and "struct" in vk:
                        desc = " { " + ", ".join(
                            f"{item(f)['name']}: {ty(item(f)['inner']['struct_field'])}" for f in vk["struct"]["fields"]
                        ) + " }"
                    elif isinstance(vk, dict) and "tuple" in vk:
                        desc = "(" + ", ".join(
                            ty(item(f)["inner"]["struct_field"]) if f is not None else "_" for f in vk["tuple"]
                        ) + ")"
                    lines.add(f"variant {here}::{var['name']}{desc}")
            if kind == "trait":
                for mid in v["items"]:
                    m = item(mid)
                    if m and "function" in m["inner"]:
                        lines.add(sig(f"{here}::{m['name']}", m["inner"]["function"]))
            for impl_id in v.get("impls", []):
                imp = item(impl_id)
                if imp is None:
                    continue
                iv = imp["inner"]["impl"]
                if iv.get("is_synthetic") or iv.get("blanket_impl"):
                    continue
                tr = iv.get("trait")
                if tr:
                    lines.add(f"impl {path_name(tr)}{generic_args(tr.get('args'))} for {here}")
                    continue
                for mid in iv["items"]:
                    m = item(mid)
                    if m and m.get("visibility") == "public" and "function" in m["inner"]:
                        lines.add(sig(f"{here}::{m['name']}", m["inner"]["function"]))
                    elif m and m.get("visibility") == "public" and "constant" in m["inner"]:
                        lines.add(f"const {here}::{m['name']}: {ty(m['inner']['constant']['type'])}")
        elif kind == "constant":
            lines.add(f"const {here}: {ty(v['type'])}")
        elif kind == "static":
            lines.add(f"static {here}: {ty(v['type'])}")
        elif kind == "type_alias":
            lines.add(f"type {here}{generics(v.get('generics', {}))} = {ty(v['type'])}")
        elif kind == "macro":
            lines.add(f"macro {here}")
        else:
            lines.add(f"{kind} {here}")

    root = doc["root"]
    walk(root, "")
    print(f"# public API of {item(root)['name']} {doc.get('crate_version') or ''} "
          f"(rustdoc JSON format {doc['format_version']}); regenerate with ci/public-api.sh")
    for l in sorted(lines):
        print(l)


main()
